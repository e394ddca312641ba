"""The TRL integration trains with `aplot train-rm`'s loss: TRL's RewardTrainer with `AplotRewardTrainer`
runs a few steps on TRL's conversational format, and its loss on the first batch equals the loss `aplot
train-rm` logs for the same batch (the same pairs, tokens, weights and settings), for BT and for APLOT
readings with each semantic source; a negated margin, a margin on the wrong pairs, or chosen and rejected
swapped gives another loss. Tiny models, CPU."""

from __future__ import annotations

import json
import math

import pytest

trl = pytest.importorskip("trl", reason='TRL is the optional extra aplot[trl]: pip install -e ".[trl]"')

PAIRS = 40  # synthetic pairs before the split; every training pair is in the one batch of each step
STEPS = 3
LR = 1e-3
SHARP = 50.0  # the tiny RM's head scaled: rewards that differ from pair to pair (else every margin reads alike)
REL = 1e-5  # the equality's tolerance on the first batch (seen: 4e-6 at most); a mistake moves the loss twice as far

CASES = {
    "bt": {"loss": "bt"},
    "section2-backbone": {"loss": "aplot", "semantic_source": "backbone", "w_rew": 0.5, "w_sem": 0.5},
    "normalised-none": {
        "loss": "aplot",
        "semantic_source": "none",
        "plan_on": "hardness",
        "cost_norm": "minmax",
        "margin_norm": "zscore",
        "margin_scale": 2.0,
    },
    "embeddings-center": {
        "loss": "aplot+center",
        "semantic_source": "embeddings",
        "w_rew": 0.5,
        "w_sem": 0.5,
        "margin_from": "diag",
        "center_eta": 0.05,
    },
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama_rm_dir, tiny_bert_dir, aplot_cache):
    """A small pairs artifact, its embeddings (a tiny BERT encoder) and a tiny Llama RM with a sharp head."""
    import os

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from aplot_cli import embed, prepare
    from aplot_cli.config import EmbedConfig, PrepareConfig

    os.environ["APLOT_CACHE"] = str(aplot_cache)
    root = tmp_path_factory.mktemp("trl")
    prepare.run(
        PrepareConfig(recipe="synthetic", synthetic_pairs=PAIRS, synthetic_ood_pairs=4, test_size=0.25), root / "pairs"
    )
    embed.run(EmbedConfig(model=str(tiny_bert_dir), max_length=64), root / "pairs", root / "emb")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_rm_dir)
    with torch.no_grad():
        model.score.weight.mul_(SHARP)
    model.save_pretrained(root / "rm", safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_llama_rm_dir).save_pretrained(root / "rm")
    return root


def trl_dataset(root, swap: bool = False):
    """The pairs artifact's training split in TRL's conversational explicit-prompt format, with the
    embeddings artifact's vectors as the embedding columns."""
    from datasets import Dataset

    from aplot_cli.formatting import parse_messages
    from aplot_cli.readers.embeddings import load_embeddings
    from aplot_cli.readers.pairs import load_pairs

    frame = load_pairs(root / "pairs", "train")
    vectors = load_embeddings(root / "emb", "train")
    row = {pid: i for i, pid in enumerate(vectors.pair_ids)}
    rows = []
    for pid, prompt, messages, chosen, rejected in zip(
        frame["pair_id"], frame["prompt"], frame["prompt_messages"], frame["chosen"], frame["rejected"], strict=True
    ):
        if swap:
            chosen, rejected = rejected, chosen
        turns = (parse_messages(messages) if messages else None) or [{"role": "user", "content": prompt}]
        emb_c, emb_r = vectors.chosen[row[pid]].tolist(), vectors.rejected[row[pid]].tolist()
        rows.append(
            {
                "prompt": turns,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "emb_chosen": emb_r if swap else emb_c,
                "emb_rejected": emb_c if swap else emb_r,
            }
        )
    return Dataset.from_list(rows), frame


def aplot_losses(root, case: str) -> list[float]:
    """`aplot train-rm`'s logged loss at each step (one batch: every training pair)."""
    from aplot_cli import train
    from aplot_cli.config import TrainConfig
    from aplot_cli.readers.pairs import load_pairs

    settings = dict(CASES[case])
    n = len(load_pairs(root / "pairs", "train"))
    cfg = TrainConfig(
        backbone=str(root / "rm"),
        loss=tuple(settings.pop("loss").split("+")),
        **settings,
        batch_size=n,
        max_steps=STEPS,
        learning_rate=LR,
        logging_steps=1,
        save_steps=1000,
        max_eval_pairs=4,
        train_eval_pairs=4,
        save_margins=False,
        device="cpu",
    )
    embeddings = root / "emb" if cfg.semantic_source == "embeddings" else None
    out = root / f"aplot-{case}"
    train.run(cfg, root / "pairs", out, embeddings_dir=embeddings)
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [log["loss"] for log in logs if "loss" in log]


def trl_trainer(root, case: str, dataset):
    from aplot_cli.integrations.trl import AplotRewardConfig, AplotRewardTrainer

    args = AplotRewardConfig(
        output_dir=str(root / f"trl-{case}"),
        per_device_train_batch_size=len(dataset),
        max_steps=STEPS,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        **CASES[case],
    )
    return AplotRewardTrainer(model=str(root / "rm"), args=args, train_dataset=dataset)


def first_batch_loss(trainer, margin_fn=None) -> float:
    """The trainer's loss on the whole training set as one batch, the model in training mode."""
    import dataclasses

    import torch

    dataset = trainer.train_dataset
    batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    saved = trainer.margin_fn
    if margin_fn is not None:
        trainer.margin_fn = lambda *a, **k: (lambda r: dataclasses.replace(r, margin=margin_fn(r.margin)))(
            saved(*a, **k)
        )
    try:
        with torch.no_grad():
            return float(trainer.compute_loss(trainer.model.train(), batch))
    finally:
        trainer.margin_fn = saved


@pytest.mark.parametrize("case", list(CASES))
def test_trl_loss_equals_train_rm_loss_on_the_same_batch(setup, case):
    from transformers import AutoTokenizer

    from aplot_cli import formatting

    dataset, frame = trl_dataset(setup)
    trainer = trl_trainer(setup, case, dataset)
    # the same tokens: TRL's own tokenisation of its conversational format is aplot's chat-template encoding
    tokenizer = formatting.prepare_tokenizer(AutoTokenizer.from_pretrained(setup / "rm"))
    for i, example in enumerate(trainer.train_dataset):
        for side in ("chosen", "rejected"):
            ours = formatting.encode(tokenizer, frame["prompt"][i], frame[side][i], 256, frame["prompt_messages"][i])
            assert example[f"{side}_ids"] == ours.input_ids, (i, side)
    before = first_batch_loss(trainer)
    trainer.train()
    trl_logged = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(trl_logged) == STEPS and all(math.isfinite(x) for x in trl_logged)

    reference = aplot_losses(setup, case)
    assert len(reference) == STEPS
    assert trl_logged[0] == pytest.approx(reference[0], rel=REL, abs=1e-6)  # the first batch: the same weights
    assert before == pytest.approx(reference[0], rel=REL, abs=1e-6)
    # the following steps too: the same gradients, so the same updates
    assert trl_logged == pytest.approx(reference, rel=1e-3)


@pytest.mark.parametrize("case", list(CASES))
def test_a_wrong_margin_or_swapped_pairs_give_another_loss(setup, case):
    """What the equality above would miss if it held for any loss: each mistake moves the first batch's
    loss past twice the tolerance of the equality."""
    import torch

    dataset, _ = trl_dataset(setup)
    trainer = trl_trainer(setup, case, dataset)
    right = first_batch_loss(trainer)
    apart = 2 * REL * abs(right)
    swapped = first_batch_loss(trl_trainer(setup, case, trl_dataset(setup, swap=True)[0]))
    assert abs(swapped - right) > apart, (swapped, right)
    if not trainer.spec.aplot:
        return
    negated = first_batch_loss(trainer, margin_fn=lambda m: -m)
    shifted = first_batch_loss(trainer, margin_fn=lambda m: torch.roll(m, 1))  # each pair gets its neighbour's
    zeroed = first_batch_loss(trainer, margin_fn=torch.zeros_like)
    for name, wrong in {"negated": negated, "shifted": shifted, "zeroed": zeroed}.items():
        assert abs(wrong - right) > apart, (name, wrong, right)


def test_every_setting_is_a_flag_of_trl_parser():
    """docs/api.md: TRL's scripts parse AplotRewardConfig's fields as flags, by train-rm's names."""
    from trl import TrlParser

    from aplot_cli import AplotSettings
    from aplot_cli.integrations.trl import AplotRewardConfig

    (args,) = TrlParser(AplotRewardConfig).parse_args_and_config(
        [
            "--output_dir",
            "out",
            "--loss",
            "aplot+center",
            "--w_sem",
            "0.5",
            "--margin_norm",
            "zscore",
            "--semantic_source",
            "none",
            "--use_cpu",
            "--bf16",
            "false",
            "--report_to",
            "none",
        ]
    )
    assert (args.loss, args.w_sem, args.margin_norm, args.semantic_source) == ("aplot+center", 0.5, "zscore", "none")
    settings = AplotSettings.from_config(args)
    assert (settings.w_sem, settings.margin_norm) == (0.0, "zscore")  # semantic_source none: no semantic term


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"loss": "aplot+bogus"}, "bogus"),
        ({"semantic_source": "encoder"}, "semantic_source"),
        ({"ot_reg": 0.0}, "ot_reg"),
        ({"margin_from": "column"}, "margin_from"),
        ({"loss": "aplot+constant_margin"}, "constant_margin"),
        ({"margin_norm": "zscore", "per_device_train_batch_size": 2}, "per_device_train_batch_size"),
    ],
)
def test_a_setting_that_cannot_train_is_refused_by_name(changes, named, tmp_path):
    from aplot_cli.errors import ConfigError
    from aplot_cli.integrations.trl import AplotRewardConfig

    with pytest.raises((ValueError, ConfigError), match=named):
        AplotRewardConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **changes)


def test_missing_columns_are_refused_before_the_model_loads(tmp_path):
    from datasets import Dataset

    from aplot_cli.integrations.trl import AplotRewardConfig, AplotRewardTrainer

    rows = Dataset.from_list([{"chosen": "a good answer", "rejected": "a bad one"}] * 4)
    for changes, named in (({"semantic_source": "embeddings"}, "emb_chosen"), ({"loss": "margin+aplot"}, "margin")):
        args = AplotRewardConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **changes)
        with pytest.raises(ValueError, match=named):  # the model's path does not exist: nothing was loaded
            AplotRewardTrainer(model=str(tmp_path / "no-such-model"), args=args, train_dataset=rows)
