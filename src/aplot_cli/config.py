"""Stage configs: one frozen dataclass per stage. Each field (`option`) is the one declaration of a flag, its
YAML key, its --help line and its manifest entry; the section-2 APLOT defaults and allowed values come from
`margins.settings`. How a config is read from its layers (defaults < `--config` < flags) is
`config_files.py`'s."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aplot_cli.margins.settings import (
    SECTION2,
    CostNorm,
    MarginFrom,
    MarginNorm,
    OTScope,
    OTSolver,
    PlanOn,
    SemanticSource,
)

C = TypeVar("C")


# The panels of a command's --help (`option(panel=...)`), in the order --help shows them.
PANELS = ("Source", "Data", "Split and noise", "Benchmark", "Model", "Reward", "Prompts", "Generation", "Loss",
          "APLOT margin", "Readings", "Batches", "Optimisation", "Evaluation", "Checkpoints", "Grid", "Executor",
          "Devices and distributed", "Output")


def option(default: Any, help: str, *, panel: str | None = None, shown: str | None = None,
           aliases: tuple[str, ...] = (), short: str | None = None, split: str | None = None,
           artifact: bool = False) -> Any:
    """A config field that is also a command-line flag (`aplot_cli.options.config_options` builds it).

    `help` is the flag's help and `panel` the --help panel it is listed in (one of `PANELS`); `shown`
    replaces the default in `--help` where the value alone says little (None meaning "all", "the
    manifest's", ...); `aliases` are other names accepted as flags and YAML keys (`lr` for
    `learning_rate`); `short` a one-letter flag; `split` joins several values in one flag
    (`--loss bt+center`); `artifact` marks a path that may name an artifact's manifest.json (what a
    stage prints), read as the artifact folder."""
    return field(default=default, metadata={"help": help, "panel": panel, "shown": shown, "aliases": aliases,
                                            "short": short, "split": split, "artifact": artifact})


@dataclass(frozen=True)
class PrepareConfig:
    """`aplot prepare`: where pairs come from and how they are filtered and split."""

    recipe: str | None = option(
        None, "Recipe name in data_recipes/ (synthetic, hh-rlhf, unified-feedback[-40k|-400k], ultrafeedback, "
              "skywork-80k, hhh-alignment) or a path to a recipe YAML.", shown="none: --dataset or --files",
              panel="Source")
    dataset: str | None = option(
        None, "Hub dataset id, a local folder laid out as on the hub, or a save_to_disk folder; read when no --files.",
        shown="the recipe's", panel="Source")
    dataset_config: str | None = option(None, "Hub dataset config name.", shown="the recipe's, else none",
                                        panel="Source")
    dataset_split: str = option("train", "Split to read: of a hub dataset, or of a folder a DatasetDict was saved to.",
                                panel="Source")
    test_split: str | None = option(
        None, "A split of the source (hub dataset or saved DatasetDict, e.g. test) kept as the test split, instead "
              "of holding out --test-size.", shown="none: --test-size", panel="Split and noise")
    files: tuple[str, ...] = option(
        (), "Local jsonl/json/parquet/csv file(s), or folders written by datasets' save_to_disk; repeat for several.",
        short="-f", shown="none", panel="Source")
    test_files: tuple[str, ...] = option(
        (), "Your own test file(s) or save_to_disk folder(s), kept as the test split instead of holding out "
            "--test-size; repeat for several.", shown="none: --test-size", panel="Split and noise")
    columns: tuple[str, ...] = option(
        (), "Your column names, TARGET=SOURCE joined by commas (prompt=question,chosen=good,rejected=bad; id=uid), "
            "over the recipe's.", split=",", shown="the names themselves", panel="Source")
    on_bad_rows: Literal["error", "skip"] = option(
        "error", "error: stop at the first bad row, naming it; skip: drop and count it in the manifest.",
        panel="Source")
    test_size: float = option(0.1, "Fraction of prompts held out as the test split.", panel="Split and noise")
    seed: int = option(0, "Random seed (split, --max-pairs sample, --flip-ratio).", panel="Split and noise")
    max_pairs: int | None = option(
        None, "Keep a seeded random sample (--seed) of this many valid pairs, in source order; every row is "
              "still validated.", shown="all", panel="Source")
    every_nth: int = option(1, "Read every n-th source row.", panel="Source")
    flip_ratio: float = option(0.0, "Swap chosen/rejected on this fraction of training pairs (label noise).",
                               panel="Split and noise")
    flip_seed: int | None = option(
        None, "Seed of the --flip-ratio draw alone (the split stays --seed's): a new draw of noisy labels on the "
              "same split.", shown="--seed", panel="Split and noise")
    synthetic_pairs: int = option(4000, "Synthetic recipe: pairs from the in-distribution task families.",
                                  panel="Source")
    synthetic_ood_pairs: int = option(600, "Synthetic recipe: pairs from the reserved OOD families.", panel="Source")
    from_samples: str | None = option(
        None, "A samples artifact (`aplot sample --split train`; folder or manifest.json): on-policy pairs, "
              "chosen passes the gold checker and rejected fails it, for the same prompt.", shown="none",
        artifact=True, panel="Source")
    pairs_per_prompt: int = option(
        2, "--from-samples: pairs per prompt, drawn (seeded) from its distinct passing x failing responses.",
        panel="Source")


@dataclass(frozen=True)
class EmbedConfig:
    """`aplot embed`: which encoder, what text, where the cache lives."""

    model: str = option("minilm-l6", "Encoder: minilm-l6 (embedded), a local folder, or a hub id.", panel="Model")
    text: Literal["prompt_response", "response"] = option("prompt_response", "What to embed.", panel="Data")
    embed_prompt: bool = option(False, "Also embed the prompts.", panel="Data")
    batch_size: int = option(64, "Texts per batch.", panel="Devices and distributed")
    max_length: int = option(256, "Max tokens per text (the prompt is cut first, from the left).", panel="Data")
    cache_dir: str | None = option(None, "Embedding cache folder.",
                                   shown="$APLOT_CACHE/embeddings, else ~/.cache/aplot/embeddings", panel="Output")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps.", panel="Devices and distributed")
    trust_remote_code: bool = option(False, "Allow a hub model's own Python code to run.", panel="Model")


@dataclass(frozen=True)
class PPOConfig:
    """`aplot ppo`: policy, reward model, prompts, rollout and PPO settings (method.md section 6)."""

    policy: str = option("smollm2-135m", "Causal LM: smollm2-135m (embedded), a local folder, or a hub id.",
                         panel="Model")
    reward: Literal["model", "gold"] = option(
        "model", "What PPO maximises: model (the --reward-model's score) or gold (each prompt's verifiable gold "
                 "checker, 1 pass / 0 fail: the ceiling of the synthetic-gold setup; no reward model; every prompt "
                 "must have a checker).", panel="Reward")
    reward_model: str | None = option(
        None, "A train-rm artifact (folder or its manifest.json), or a sequence-classification RM folder / hub id.",
        shown="none; required with --reward model", artifact=True, panel="Reward")
    prompts: str | None = option(
        None, "A pairs artifact (its prompts; folder or its manifest.json), a samples artifact (aplot sample) or "
              "a jsonl of {\"prompt\": ...}.",
        shown="none; required", artifact=True, panel="Prompts")
    prompts_split: str = option("train", "Split of a pairs artifact to draw prompts from.", panel="Prompts")
    max_prompts: int | None = option(None, "Use at most this many prompts (a seeded sample).", shown="all",
                                     panel="Prompts")
    batch_size: int = option(8, "Rollouts per PPO update.", panel="Optimisation")
    mini_batch_size: int = option(4, "Rollouts per gradient step.", panel="Optimisation")
    ppo_epochs: int = option(2, "Passes over each batch of rollouts.", panel="Optimisation")
    updates: int = option(10, "PPO updates (each: generate, score, optimise).", panel="Optimisation")
    lr: float = option(1e-5, "AdamW learning rate.", aliases=("learning_rate",), panel="Optimisation")
    max_grad_norm: float = option(1.0, "Gradient clipping norm.", panel="Optimisation")
    kl_coef: float = option(0.05, "Beta of the per-token k1 KL penalty to the initial policy.", panel="Optimisation")
    gamma: float = option(1.0, "GAE discount.", panel="Optimisation")
    lam: float = option(0.95, "GAE lambda.", panel="Optimisation")
    cliprange: float = option(0.2, "Policy ratio clip.", panel="Optimisation")
    cliprange_value: float = option(0.2, "Value clip.", panel="Optimisation")
    vf_coef: float = option(0.1, "Value loss weight.", panel="Optimisation")
    max_new_tokens: int = option(48, "Response length cap.", panel="Generation")
    max_prompt_length: int = option(256, "Prompt tokens kept (cut from the left).", panel="Prompts")
    temperature: float = option(0.7, "Sampling temperature.", panel="Generation")
    top_p: float = option(1.0, "Nucleus sampling (1: off).", panel="Generation")
    missing_eos_penalty: float = option(
        1.0, "Subtracted from the (normalised) score of a response without EOS.", panel="Reward")
    reward_norm: Literal["none", "whiten", "running"] = option(
        "running", "Score normalisation: none, whiten (per batch), running (mean/std over all updates).",
        panel="Reward")
    rm_max_length: int | None = option(None, "Reward-model input length.",
                                       shown="the train-rm manifest's, else the model's", panel="Reward")
    rm_batch_size: int = option(16, "Texts per reward-model forward pass.", panel="Reward")
    seed: int = option(0, "Random seed.", panel="Optimisation")
    eval_prompts: str | None = option(
        None, "Held-out prompts evaluated during training (eval.jsonl): a samples artifact (aplot sample --split "
              "test; folder or manifest.json), a pairs artifact (its --eval-prompts-split) or a jsonl of "
              "{\"prompt\": ...}.", shown="none: no held-out evaluation", artifact=True, panel="Evaluation")
    eval_prompts_split: str = option("test", "Split of a pairs artifact given as --eval-prompts.", panel="Evaluation")
    eval_max_prompts: int | None = option(
        None, "Evaluate at most this many held-out prompts (the same ones for every --seed).", shown="all",
        panel="Evaluation")
    eval_every: int = option(
        1, "Evaluate the held-out prompts every n updates, and always before the first and after the last.",
        panel="Evaluation")
    eval_n: int = option(1, "Responses sampled per held-out prompt at each evaluation (rollout temperature).",
                         panel="Evaluation")
    save_every: int = option(5, "Checkpoint every n updates (0: only the final policy).", panel="Checkpoints")
    sample_size: int = option(4, "Rollouts per update written to rollouts.jsonl.", panel="Output")
    device: str = option("auto", "auto, cpu or cuda (accelerate picks the device).", panel="Devices and distributed")
    trust_remote_code: bool = option(False, "Allow a hub model's own Python code to run.", panel="Model")
    chat_template: bool = option(
        True, "Apply chat templates (policy prompts; RM folders without an artifact).", panel="Model")


def _default_families() -> tuple[str, ...]:
    from aplot_cli.data.verifiable import DEFAULT_FAMILIES

    return DEFAULT_FAMILIES


@dataclass(frozen=True)
class SampleConfig:
    """`aplot sample`: n responses per prompt from a policy on the verifiable families, each gold-labelled."""

    policy: str = option("smollm2-135m", "Causal LM: smollm2-135m (embedded), a local folder, or a hub id.",
                         panel="Model")
    families: tuple[str, ...] = option(
        _default_families(), "Verifiable families (aplot_cli.data.verifiable), comma-separated or repeated.",
        split=",", panel="Prompts")
    split: Literal["train", "test"] = option(
        "train", "Which prompts: train (for preference pairs) or test (held out, for best-of-n); a prompt's split "
                 "is fixed by a hash of its text, so the two never share a prompt.", panel="Prompts")
    prompts: int = option(200, "Prompts in all, spread round-robin over the families.", panel="Prompts")
    n: int = option(8, "Responses sampled per prompt.", panel="Generation")
    temperature: float = option(0.7, "Sampling temperature.", panel="Generation")
    top_p: float = option(1.0, "Nucleus sampling (1: off).", panel="Generation")
    max_new_tokens: int = option(32, "Response length cap (tokens).", panel="Generation")
    max_prompt_length: int = option(256, "Prompt tokens kept (cut from the left).", panel="Prompts")
    batch_size: int = option(64, "Sequences per generate call.", panel="Devices and distributed")
    chunk_prompts: int = option(16, "Prompts per chunk file (a killed run loses at most one chunk; --resume).",
                                panel="Checkpoints")
    seed: int = option(0, "Random seed (prompts and sampling).", panel="Generation")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.", panel="Devices and distributed")
    chat_template: bool = option(True, "Render prompts with the policy's chat template (when it has one).",
                                 panel="Model")
    trust_remote_code: bool = option(False, "Allow a hub model's own Python code to run.", panel="Model")


@dataclass(frozen=True)
class EvalConfig:
    """`aplot eval-rm`: which benchmark, where its rows come from, and how texts are scored."""

    benchmark: str = option("pairs", "rewardbench, rewardbench2, rm-bench, hhh, pairs, or bon (best-of-n against "
                                     "a gold checker, on --samples).", panel="Benchmark")
    data: tuple[str, ...] = option(
        (), "Local files in the benchmark's hub schema (pairs: a pairs artifact, folder or its manifest.json, or "
            "jsonl/parquet); repeat for several.", shown="none: the benchmark loads from the hub", artifact=True,
            panel="Benchmark")
    samples: str | None = option(
        None, "bon: a samples artifact (`aplot sample --split test`, e.g. --n 64; folder or manifest.json).",
        shown="none", artifact=True, panel="Benchmark")
    split: str | None = option(None, "Hub split, pairs-artifact split, or the samples' split (bon).",
                               shown="the benchmark's own", panel="Benchmark")
    prior_sets: str | None = option(
        None, "rewardbench: allenai/preference-test-sets (hub) or local files, for the paper score.", shown="none",
        panel="Benchmark")
    domain: str | None = option(
        None, "rm-bench: the domain of rows that name none (chat, code, math, safety-refuse, safety-response).",
        shown="the file's name (chat_filtered.json: chat)", panel="Benchmark")
    from_predictions: str | None = option(
        None, "Recompute every metric from a predictions file (ours or the official wide format); no model.",
        shown="none", panel="Benchmark")
    batch_size: int = option(32, "Texts per forward pass.", panel="Devices and distributed")
    max_length: int | None = option(None, "Max tokens per input.",
                                    shown="the train-rm manifest's, else min(2048, model limit)", panel="Model")
    chat_template: bool | None = option(None, "Render with the tokenizer's chat template.",
                                        shown="the train-rm manifest's, else on", panel="Model")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps.", panel="Devices and distributed")
    trust_remote_code: bool = option(False, "Allow a hub model's own Python code to run.", panel="Model")


# Learning rates that learn at the sizes the README suggests (hundreds to a few thousand pairs, tens to a
# few hundred steps): at transformers' 5e-5, 40 MiniLM steps on 300 pairs left the loss at log 2. A head
# on frozen features, and LoRA adapters, take larger steps than full fine-tuning of the same backbone.
LEARNING_RATES = {"minilm-l6": 2e-4, "smollm2-135m": 3e-5}  # full fine-tuning, per embedded backbone
OTHER_LEARNING_RATE = 5e-5                                   # any other folder or hub id
LORA_LEARNING_RATES = {"minilm-l6": 1e-3, "smollm2-135m": 2e-4}
OTHER_LORA_LEARNING_RATE = 2e-4
FROZEN_HEAD_LEARNING_RATE = 1e-3


def _rate(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-")  # 2e-4, as people write it


def _learning_rate_rule() -> str:
    full = ", ".join(f"{name} {_rate(rate)}" for name, rate in LEARNING_RATES.items())
    lora = ", ".join(f"{name} {_rate(rate)}" for name, rate in LORA_LEARNING_RATES.items())
    return (f"per backbone: {full}, other {_rate(OTHER_LEARNING_RATE)}; with --lora {lora}, other "
            f"{_rate(OTHER_LORA_LEARNING_RATE)}; with --frozen-backbone {_rate(FROZEN_HEAD_LEARNING_RATE)}")


@dataclass(frozen=True)
class TrainConfig:
    """`aplot train-rm`: backbone, loss combination, every APLOT switch (method.md section 2), and the
    optimisation settings handed to `transformers.Trainer`."""

    backbone: str = option("minilm-l6", "minilm-l6 (embedded), smollm2-135m (embedded), a local folder or a hub id.",
                           panel="Model")
    loss: tuple[str, ...] = option(
        ("aplot",), "bt, margin, label_smooth, focal, aplot, constant_margin, center; join with + (aplot+center).",
        split="+", panel="Loss")
    # APLOT margin (method.md section 2; the names, allowed values and defaults are `margins.settings`')
    semantic_source: SemanticSource = option(
        "embeddings", "APLOT's semantic cost from the --embeddings artifact, the backbone's last hidden states, "
                  "or none.", panel="APLOT margin")
    w_rew: float = option(SECTION2.w_rew, "Weight of the reward-difference term in APLOT's cost.", panel="APLOT margin")
    w_sem: float = option(SECTION2.w_sem, "Weight of the semantic (cosine) term in APLOT's cost.", panel="APLOT margin")
    ot_reg: float = option(SECTION2.ot_reg, "Sinkhorn entropic regularisation epsilon.", panel="APLOT margin")
    ot_iters: int = option(SECTION2.ot_iters, "Sinkhorn iterations (at most, on the CPU; exactly, on CUDA).",
                           panel="APLOT margin")
    ot_tol: float = option(SECTION2.ot_tol, "Sinkhorn stops once the marginal error is below this (also the "
                           "'converged' test).", panel="APLOT margin")
    # the readings of method.md section 2b (defaults: section 2)
    plan_on: PlanOn = option(
        SECTION2.plan_on, "cost (section 2: plan mass avoids hard cells) or hardness (mass goes to them).",
        panel="APLOT margin")
    cost_norm: CostNorm = option(
        SECTION2.cost_norm, "Rescale the cost within the batch before Sinkhorn.", panel="APLOT margin")
    margin_from: MarginFrom = option(
        SECTION2.margin_from, "How the margin is read off the plan (own_cost: no OT, the pair's own cost).",
        panel="APLOT margin")
    margin_norm: MarginNorm = option(SECTION2.margin_norm, "Normalise the margins within the plan.",
                                     panel="APLOT margin")
    margin_scale: float = option(SECTION2.margin_scale, "APLOT margin scale.", panel="APLOT margin")
    constant_margin: float = option(0.5, "c of --loss constant_margin: -log sigmoid(d - c) for every pair.",
                                    panel="Loss")
    margin_warmup_steps: int = option(SECTION2.margin_warmup_steps, "Plain BT (a zero APLOT margin) for the first n "
                                      "steps.", panel="APLOT margin")
    ot_scope: OTScope = option(SECTION2.ot_scope, "One plan per rank (local) or across ranks (global).",
                               panel="APLOT margin")
    ot_solver: OTSolver = option(
        SECTION2.ot_solver, "auto: POT on the CPU, the float32 GPU solver (fused kernel) on CUDA.",
        panel="APLOT margin")
    # baseline loss constants (method.md section 3)
    label_smooth_eps: float = option(0.1, "eps of --loss label_smooth.", panel="Loss")
    center_eta: float = option(0.01, "eta of --loss center (reward centering).", panel="Loss")
    focal_gamma: float = option(2.0, "gamma of --loss focal.", panel="Loss")
    # optimisation
    learning_rate: float | None = option(None, "AdamW peak learning rate.", shown=_learning_rate_rule(),
                                         aliases=("lr",), panel="Optimisation")
    epochs: float = option(1.0, "Passes over the training split.", panel="Optimisation")
    max_steps: int = option(-1, "Stop after this many steps (> 0 overrides --epochs).", panel="Optimisation")
    batch_size: int = option(16, "Pairs per device per step (one OT plan).", panel="Optimisation")
    eval_batch_size: int = option(32, "Pairs per device per evaluation step.", panel="Evaluation")
    grad_accum: int = option(1, "Gradient accumulation steps.", panel="Optimisation")
    max_length: int = option(256, "Max tokens per sequence (prompt cut first, from the left).", panel="Data")
    warmup_ratio: float = option(0.0, "Fraction of the steps spent warming the learning rate up.", panel="Optimisation")
    scheduler: str = option("linear", "Any transformers scheduler name (linear, cosine, constant, ...).",
                            panel="Optimisation")
    weight_decay: float = option(0.0, "AdamW weight decay.", panel="Optimisation")
    max_grad_norm: float = option(1.0, "Gradient clipping norm.", panel="Optimisation")
    seed: int = option(0, "Random seed (data order, head initialisation, samples).", panel="Optimisation")
    logging_steps: int = option(10, "Log to train_log.jsonl every n steps.", panel="Output")
    eval_steps: int = option(0, "Test accuracy every n steps (0: at the end only).", panel="Evaluation")
    save_steps: int = option(200, "Checkpoint every n steps (for --resume after a kill).", panel="Checkpoints")
    save_total_limit: int | None = option(2, "Checkpoints kept at most.", shown="2 (none: all)", panel="Checkpoints")
    keep_checkpoints: bool = option(
        False, "Keep checkpoints/ once the run has finished (else removed: model/ is the result; no checkpoint "
               "is written at the last step unless it is a multiple of --save-steps).", panel="Checkpoints")
    group_by_length: bool | None = option(
        None, "Length-grouped batches: less padding, faster steps; they change which pairs share a batch, so "
              "they are off where pairs share a batch term (an APLOT plan).",
        shown="on for losses without a batch term (bt, label_smooth, focal, margin, constant_margin, center), "
              "off with aplot or --frozen-backbone; aplot compare keeps it off in every cell unless the grid sets it",
              panel="Optimisation")
    prefix_sharing: bool | None = option(
        None, "Causal decoders: one sequence per pair, the prompt run once (a block attention mask; scores equal the "
              "two-sequence forward, checked on the run's first pairs before training).",
        shown="on for causal decoder backbones, off for encoders and --frozen-backbone", panel="Devices and distributed")
    pack_pairs: bool = option(
        True, "With prefix sharing: several pairs per row where they fit beside the batch's longest pair.",
        panel="Devices and distributed")
    chat_template: bool = option(True, "Render conversational pairs with the tokenizer's chat template.", panel="Data")
    max_train_pairs: int | None = option(None, "Train on a seeded sample of this many pairs.", shown="all",
                                         panel="Data")
    max_eval_pairs: int | None = option(None, "Evaluate on a seeded sample of this many test pairs.", shown="all",
                                        panel="Evaluation")
    train_eval_pairs: int = option(1000, "Training pairs scored for the final train accuracy.", panel="Evaluation")
    save_margins: bool = option(True, "Write per-pair margins per step to margins.parquet.", panel="Output")
    # LoRA (peft); the score head is saved with the adapter
    lora: bool = option(False, "Train LoRA adapters (peft) and the score head; model/ holds the merged model.",
                        panel="Model")
    lora_r: int = option(16, "LoRA rank.", panel="Model")
    lora_alpha: int = option(32, "LoRA alpha.", panel="Model")
    lora_dropout: float = option(0.05, "LoRA dropout.", panel="Model")
    lora_target_modules: tuple[str, ...] = option(
        (), "Modules that get adapters; repeat for several.", shown="peft's default for the architecture",
        panel="Model")
    # frozen backbone (aplot_cli.frozen): the head trains on cached backbone features
    frozen_backbone: bool = option(
        False, "Train only the reward head on backbone features computed once and cached by content.", panel="Model")
    feature_cache_dir: str | None = option(None, "Frozen-backbone feature cache folder.",
                                           shown="$APLOT_CACHE/features, else ~/.cache/aplot/features", panel="Model")
    token_cache_dir: str | None = option(None, "Token id cache folder (keyed by content).",
                                         shown="$APLOT_CACHE/tokens", panel="Data")
    # runtime
    report_to: tuple[str, ...] = option((), "tensorboard, wandb, ... (repeat for several).", shown="none",
                                        panel="Output")
    push_to_hub: str | None = option(
        None, "Upload the finished run to this Hub repo (model/ at its root, adapter/, aplot/manifest.json) in one "
              "commit; the Hub and a token are checked before training.", shown="none", panel="Output")
    hub_private: bool = option(False, "Create the --push-to-hub repo as private.", panel="Output")
    device: str = option("auto", "auto, cpu or cuda.", panel="Devices and distributed")
    bf16: bool = option(False, "bf16 mixed precision, GPU only (--lora: the base loads in bf16).",
                        panel="Devices and distributed")
    fp16: bool = option(False, "fp16 mixed precision (GPUs without bf16; GPU only).", panel="Devices and distributed")
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass (less memory).",
                                          panel="Devices and distributed")
    attn_implementation: str | None = option(None, "Attention kernel (eager, sdpa, flash_attention_2, ...).",
                                             shown="transformers'", panel="Model")
    dataloader_workers: int = option(0, "DataLoader worker processes.", panel="Devices and distributed")
    trust_remote_code: bool = option(False, "Allow a hub model's own Python code to run.", panel="Model")


def default_learning_rate(cfg: TrainConfig) -> float:
    """The learning rate a run uses when none is set: by what trains (a frozen backbone's head, LoRA
    adapters, or the whole model) and the backbone."""
    if cfg.frozen_backbone:
        return FROZEN_HEAD_LEARNING_RATE
    if cfg.lora:
        return LORA_LEARNING_RATES.get(cfg.backbone, OTHER_LORA_LEARNING_RATE)
    return LEARNING_RATES.get(cfg.backbone, OTHER_LEARNING_RATE)


def default_group_by_length(cfg: TrainConfig) -> bool:
    """Length-grouped batches unless pairs share a batch-level term: an APLOT plan couples the pairs of a
    batch, so grouping by length would change its plans; a frozen backbone's cached features have no padding."""
    names = {n.strip() for part in cfg.loss for n in part.replace(",", "+").split("+")}
    return not ("aplot" in names or cfg.frozen_backbone)


def resolve_train(cfg: TrainConfig) -> TrainConfig:
    """The config a run trains with and records: an unset learning rate becomes its per-backbone default,
    an unset `group_by_length` its per-loss default."""
    if cfg.learning_rate is None:
        cfg = dataclasses.replace(cfg, learning_rate=default_learning_rate(cfg))
    if cfg.group_by_length is None:
        cfg = dataclasses.replace(cfg, group_by_length=default_group_by_length(cfg))
    return cfg


# Every field of a stage config is also a flag of its command (see `option`); these sets are the fields
# a command takes as flags, tested against the CLI. A field would be left out here only if it could not
# be a flag; none is today.
def _flag_fields(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


PREPARE_FLAGS = _flag_fields(PrepareConfig)
EMBED_FLAGS = _flag_fields(EmbedConfig)
TRAIN_FLAGS = _flag_fields(TrainConfig)
EVAL_FLAGS = _flag_fields(EvalConfig)
PPO_FLAGS = _flag_fields(PPOConfig)
SAMPLE_FLAGS = _flag_fields(SampleConfig)


@dataclass(frozen=True)
class MarginsConfig:
    """`aplot margins`: margin diagnostics without training (method.md section 2b): which readings, the reward
    snapshot's window or batches, and the cost settings (None: the train-rm run's, else section 2's)."""

    readings: str = option("all", "all (the 64 readings: the grid and constant_margin), named (16 aliases), or a "
                                  "comma-separated list of aliases (hardness+diag+minmax) and "
                                  "plan_on/cost_norm/margin_from/margin_norm names.", panel="Readings")
    step: int | None = option(None, "--from-run: the last step of the window.", shown="the last recorded step",
                              panel="Batches")
    window: int = option(32, "--from-run: steps STEP-WINDOW+1..STEP, each step's recorded batch one OT plan.",
                         panel="Batches")
    batches: Literal["auto", "train-rm", "random"] = option(
        "auto", "--model: train-rm (the batches train-rm made: its seed, batch size and order) or random (seeded).",
        shown="train-rm for a train-rm run without length-grouped batches, else random", panel="Batches")
    batch_size: int | None = option(None, "--model: pairs per batch.", shown="the run's, else 16", panel="Batches")
    seed: int | None = option(None, "--model: the batch order's seed.", shown="the run's, else 0", panel="Batches")
    max_batches: int | None = option(None, "--model: score only the pairs of the first n batches.", shown="all",
                                     panel="Batches")
    constant_margin: float = option(0.5, "The margin of the reference reading constant_margin (every pair).",
                                    panel="Readings")
    margin_scale: float = option(SECTION2.margin_scale, "Scale of every reading's margin (as train-rm's margin_scale).",
                                 panel="Readings")
    w_rew: float | None = option(None, "Weight of the reward cost.", shown=f"the run's, else {SECTION2.w_rew}",
                                 panel="APLOT margin")
    w_sem: float | None = option(None, "Weight of the semantic cost.", shown=f"the run's, else {SECTION2.w_sem}",
                                 panel="APLOT margin")
    ot_reg: float | None = option(None, "Sinkhorn epsilon.", shown=f"the run's, else {SECTION2.ot_reg}",
                                  panel="APLOT margin")
    ot_iters: int | None = option(None, "Sinkhorn iterations.", shown=f"the run's, else {SECTION2.ot_iters}",
                                  panel="APLOT margin")
    ot_tol: float | None = option(None, "Sinkhorn marginal tolerance (early stop).",
                                  shown=f"the run's, else {_rate(SECTION2.ot_tol)}", panel="APLOT margin")
    score_batch_size: int = option(32, "--model: texts per forward pass.", panel="Reward")
    max_length: int | None = option(None, "--model: max tokens per input.", shown="the train-rm manifest's",
                                    panel="Reward")
    device: str = option("auto", "--model: auto, cpu, cuda.", panel="Devices and distributed")
    trust_remote_code: bool = option(False, "Allow a hub model's own Python code to run.", panel="Reward")


def config_to_dict(config: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}


def closest(name: str, known: list[str]) -> str | None:
    """The known name a mistyped one most likely meant, if any is close."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    return close[0] if close else None


def replace(config: C, **changes: Any) -> C:
    return dataclasses.replace(config, **changes)


__all__ = ["PrepareConfig", "EmbedConfig", "TrainConfig", "EvalConfig", "PPOConfig", "SampleConfig", "PREPARE_FLAGS", "EMBED_FLAGS", "TRAIN_FLAGS", "EVAL_FLAGS", "PPO_FLAGS", "SAMPLE_FLAGS", "config_to_dict", "default_learning_rate", "option", "replace", "resolve_train"]
