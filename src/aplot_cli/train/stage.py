"""The train-rm stage's one entry point, `run`: check the config and inputs, load and encode the data,
build the trainer (imported only here), train, then write the model, the logs, the margin record,
`metrics.json` and, last, the manifest."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from aplot_cli import artifacts, formatting, models, outdir
from aplot_cli.config import TrainConfig, config_to_dict, resolve_train
from aplot_cli.console import info
from aplot_cli.errors import ArtifactError, ConfigError
from aplot_cli.readers.embeddings import check_embeddings_match, load_embeddings
from aplot_cli.readers.pairs import load_pairs, sample_pairs, split_files
from aplot_cli.readers.train_runs import MARGINS_FILE, STAGE
from aplot_cli.train import learned, prefix, push, report
from aplot_cli.train.data import PairDataset, SplitCollator, encode_split
from aplot_cli.train.metrics import _final_metrics, _ot_summary, pair_accuracy
from aplot_cli.train.model import load_model, weights_dtype
from aplot_cli.train.records import LOG_FILE, MarginSink
from aplot_cli.train.resume import RUN_CONFIG, check_resume, resume_step, run_record
from aplot_cli.train.validation import check_dataset_margin, validate

TENSORBOARD_DIR = "tensorboard"  # --report-to tensorboard: the event files, kept with the run


def run(cfg: TrainConfig, pairs_dir: Path, out_dir: Path, embeddings_dir: Path | None = None,
        overwrite: bool = False, resume: bool = False, extra_callbacks: tuple = ()) -> Path:
    """Train a reward model; returns the manifest path (written last, by the main process)."""
    learning_rate_source = "set" if cfg.learning_rate is not None else "default for the backbone"
    cfg = resolve_train(cfg)  # the learning rate it trains with is the one the manifest records
    spec = validate(cfg, embeddings_dir is not None)
    push.check(cfg.push_to_hub, Path(out_dir))  # before anything trains or the out-dir is touched
    pairs_art = artifacts.open_artifact(pairs_dir, "prepare")
    emb_art = artifacts.open_artifact(embeddings_dir, "embed") if embeddings_dir is not None else None
    if emb_art is not None:
        check_embeddings_match(emb_art, pairs_art)
    out_dir = Path(out_dir)
    claim = {"stage": STAGE, "overwrite": overwrite, "resume": resume,
             "inputs": [("PAIRS", pairs_dir), ("--embeddings", embeddings_dir), ("--backbone", cfg.backbone)],
             "places": [("feature cache", cfg.feature_cache_dir if cfg.frozen_backbone else None),
                        ("token cache", cfg.token_cache_dir)]}
    kept = outdir.check_out_dir(out_dir, **claim)  # refuse now; clear only once the inputs pass
    checkpoint, resumed_step = resume_step(out_dir, kept)
    if resume and checkpoint is None:  # as ppo and sample: no silent restart from step 0
        raise ArtifactError(f"--resume: {out_dir} holds no complete train-rm checkpoint, so there is nothing to "
                            "continue from",
                            hint="start the run again with --overwrite (a checkpoint is written every --save-steps "
                                 "steps), or pass the --out-dir of the run to resume")
    record = run_record(cfg, pairs_art, emb_art)
    resume_changes = check_resume(out_dir, record) if checkpoint else None
    use_cpu = runs_on_cpu(cfg.device)
    test_frame = _test_frame(pairs_art, cfg)
    train_frame = sample_pairs(load_pairs(pairs_dir, "train"), cfg.max_train_pairs, cfg.seed)
    dataset_margin = check_dataset_margin(train_frame, pairs_art.path) if spec.dataset_margin else None
    need_emb = spec.aplot and cfg.semantic_source == "embeddings" and emb_art is not None
    train_emb = load_embeddings(emb_art.path, "train") if need_emb else None  # read before the out-dir is touched
    tokenizer, model, resolved, head = load_model(cfg, use_cpu)
    args = training_args(cfg, out_dir, use_cpu, test_frame is not None)  # also joins the process group
    rank = args.process_index
    with args.main_process_first(desc="prepare the output directory"):
        if args.process_index == 0:
            outdir.prepare_out_dir(out_dir, **claim)
            if not (out_dir / RUN_CONFIG).is_file() or not checkpoint:  # a resume keeps its first start's
                artifacts.write_json_atomic(out_dir / RUN_CONFIG, {**record, "from_step": max(resumed_step, 0)})
    train, test, tokenization, encode = _encode(cfg, tokenizer, train_frame, test_frame, train_emb, args)
    sharing = prefix.decide(cfg.prefix_sharing, model, head, cfg.frozen_backbone, cfg.pack_pairs)
    sharing = prefix.confirm(sharing, cfg.prefix_sharing, model, head, train, tokenizer.pad_token_id, args.device)
    cfg = dataclasses.replace(cfg, prefix_sharing=sharing.enabled)  # the manifest records what it trained with
    attached = None
    if cfg.frozen_backbone:  # the head trains on cached backbone features
        from aplot_cli import frozen

        attached = frozen.attach(cfg, model, head, tokenizer.pad_token_id, [train, test], use_cpu, memo=encode)
        model = attached.model
    info(f"[bold]train-rm[/] {cfg.backbone} loss={spec.name}: {len(train.records)} train pairs"
         f"{f', {len(test.records)} test pairs' if test else ''}; truncated pairs: "
         f"{train.truncation['pairs_truncated']} (max_length {cfg.max_length}); prefix sharing "
         f"{'on' if sharing.enabled else 'off'}")
    trainer = _build_trainer(cfg, spec, model, head, tokenizer, train, test, out_dir, args, rank, resumed_step,
                             extra_callbacks, sharing)
    if attached is not None:
        frozen.adapt_trainer(trainer, [train, test])
    t0 = time.perf_counter()
    try:
        train_output = trainer.train(resume_from_checkpoint=checkpoint)
        seconds = time.perf_counter() - t0
        metrics = _final_metrics(trainer, train, test, train_output, seconds, cfg, resumed_step)  # -1: a fresh start
    finally:  # a run that raised (a kill, a non-finite loss) leaves no progress display printing
        for callback in trainer.callback_handler.callbacks:
            if hasattr(callback, "close"):
                callback.close()
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return out_dir / artifacts.MANIFEST
    outputs = _save(trainer, tokenizer, cfg, out_dir, train.pair_ids if trainer.margin_sink else None)
    outputs.append(artifacts.describe_output(out_dir, RUN_CONFIG))
    outputs += [artifacts.describe_output(out_dir, path.relative_to(out_dir).as_posix())
                for path in sorted((out_dir / TENSORBOARD_DIR).rglob("events.out.tfevents.*"))]
    learning = learned.judge(report.read_log(out_dir / LOG_FILE), metrics.get("train_accuracy"),
                             metrics.get("train_eval_pairs", 0),
                             cfg.batch_size * cfg.grad_accum * trainer.accelerator.num_processes)
    metrics["learned"] = learning.learned
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    pictures = report.write(out_dir, config_to_dict(cfg), metrics, LOG_FILE, learning)
    outputs.append(artifacts.describe_output(out_dir, "metrics.json"))
    outputs += [artifacts.describe_output(out_dir, name) for name in pictures.files]
    outputs += _write_cards(cfg, spec.name, metrics, pairs_art, record, tokenizer, out_dir)
    for warning in pictures.warnings:
        info(f"[bold yellow]train-rm warning:[/] {warning}")
    inputs = {"pairs": pairs_art, **({"embeddings": emb_art} if emb_art is not None else {})}
    diagnostics = {"truncation": {"train": train.truncation, **({"test": test.truncation} if test else {})},
                   "tokenization": tokenization,
                   "ot": _ot_summary(trainer),
                   **({"test_loss": "the configured loss without the APLOT margin (no OT plan at evaluation)"}
                      if test else {}),
                   "resumed_from_step": resumed_step if checkpoint else None,
                   "warnings": pictures.warnings,
                   "learning": learning.to_dict(),
                   "learning_rate": {"value": cfg.learning_rate, "source": learning_rate_source},
                   **({"resume": {"settings_checked": resume_changes is not None,
                                  "changed": resume_changes or {}}} if checkpoint else {}),
                   "device": "cpu" if use_cpu else "cuda", "world_size": trainer.accelerator.num_processes,
                   "distributed": str(trainer.accelerator.distributed_type.value),  # NO, MULTI_GPU, FSDP, ...
                   "precision": "float32" if use_cpu or not (cfg.bf16 or cfg.fp16) else
                                ("bf16" if cfg.bf16 else "fp16") + " mixed",
                   "mixed_precision_ignored_on_cpu": bool((cfg.bf16 or cfg.fp16) and use_cpu),
                   "weights_dtype": weights_dtype(cfg, use_cpu),
                   "attn_implementation": getattr(trainer.accelerator.unwrap_model(trainer.model).config,
                                                  "_attn_implementation", None),
                   **({"dataset_margin": dataset_margin} if dataset_margin else {}),
                   **({"frozen_backbone": attached.manifest()} if attached is not None else {}),
                   "prefix_sharing": sharing.manifest()}
    info(f"[bold]train-rm[/] done in {seconds:.1f}s: train accuracy {metrics.get('train_accuracy', float('nan')):.4f}"
         f", test accuracy {metrics.get('test_accuracy', float('nan')):.4f}")
    manifest = artifacts.write_manifest(
        out_dir, stage=STAGE, config=config_to_dict(cfg), inputs=inputs, outputs=outputs, metrics=metrics,
        diagnostics=diagnostics,
        extra={"model": {"backbone": cfg.backbone, "resolved": _relative_or_id(resolved),
                         "base_model": models.portable_name(cfg.backbone),
                         "identity": models.identity(resolved),
                         "head": head,
                         "frozen_backbone": attached.manifest() if attached is not None else None,
                         "loss": spec.name, "path": "model", "all_files_listed": True, "lora": cfg.lora,
                         "chat_template": formatting.uses_chat_template(tokenizer, cfg.chat_template),
                         "max_length": cfg.max_length, "pad_token_id": tokenizer.pad_token_id,
                         "padding_side": tokenizer.padding_side}})
    if not cfg.keep_checkpoints:  # finished: model/ is the result, and a finished run is not resumed
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    if cfg.push_to_hub:
        url = push.push(out_dir, cfg.push_to_hub, cfg.hub_private, f"aplot train-rm: {spec.name} on {cfg.backbone}")
        info(f"[bold]train-rm[/] pushed to the Hub: {url}")
    return manifest


def _encode(cfg: TrainConfig, tokenizer, train_frame, test_frame, train_emb, args):
    """Both splits encoded in batched calls through the token cache, rank 0 first (`main_process_first`):
    it tokenises what the cache lacks and stores it; the other ranks then read every text from the cache.
    Returns the splits, the manifest's `tokenization` record and the memo (its counts go to a frozen run's
    record)."""
    from aplot_cli import tokencache

    t0 = time.perf_counter()
    with args.main_process_first(desc="tokenize (rank 0 first; the others read its token cache)"), \
            tokencache.remembered(cfg.token_cache_dir, tokenizer) as memo:
        train = encode_split(train_frame, tokenizer, cfg, train_emb, encode_many=memo.encode_many)
        test = encode_split(test_frame, tokenizer, cfg, split_id=1, encode_many=memo.encode_many) \
            if test_frame is not None else None
    seconds = time.perf_counter() - t0
    record = {"texts": memo.hits + memo.misses, "from_cache": memo.hits, "tokenized": memo.misses,
              "seconds": round(seconds, 3),
              "cache": str(Path(cfg.token_cache_dir) if cfg.token_cache_dir else tokencache.default_dir())}
    info(f"[bold]train-rm[/] tokens: {memo.misses} texts tokenised, {memo.hits} from the token cache "
         f"({seconds:.1f}s)")
    return train, test, record, memo


def training_args(cfg: TrainConfig, out_dir: Path, use_cpu: bool, has_eval: bool):
    from transformers import TrainingArguments

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.scheduler, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps,
        eval_strategy="steps" if cfg.eval_steps > 0 and has_eval else "no", eval_steps=cfg.eval_steps or None,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit, seed=cfg.seed,
        report_to=list(cfg.report_to) or "none", use_cpu=use_cpu, bf16=cfg.bf16 and not use_cpu, fp16=cfg.fp16 and not use_cpu,
        remove_unused_columns=False, disable_tqdm=True, dataloader_num_workers=cfg.dataloader_workers,
        activation_checkpointing=cfg.gradient_checkpointing,
        ddp_backend="gloo" if use_cpu and distributed else None, label_names=[],
        # pinned batches copied without a host sync (GPU); on the CPU there is nothing to copy
        dataloader_pin_memory=not use_cpu, accelerator_config={"non_blocking": not use_cpu},
        ddp_find_unused_parameters=False if distributed else None)


def runs_on_cpu(device: str) -> bool:
    import torch

    if device == "auto":
        return not torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was asked for but no CUDA device is visible", hint="use --device cpu")
    return device == "cpu"


def _relative_or_id(resolved: str) -> str:
    return Path(resolved).name if Path(resolved).exists() else resolved


def _test_frame(pairs_art, cfg: TrainConfig):
    if "test.parquet" not in split_files(pairs_art):
        return None
    return sample_pairs(load_pairs(pairs_art.path, "test"), cfg.max_eval_pairs, cfg.seed)


def _build_trainer(cfg, spec, model, head, tokenizer, train, test, out_dir, args, rank, resumed_step,
                   extra_callbacks, sharing: prefix.Sharing):
    from aplot_cli.margins import AplotMargin, AplotSettings
    from aplot_cli.train.callbacks import run_callbacks
    from aplot_cli.train.trainer import RewardTrainer  # here, so that importing the package skips transformers

    margin_fn = AplotMargin(AplotSettings.from_config(cfg)) if spec.aplot else None
    sink = MarginSink(out_dir, train.pair_ids, rank, resumed_step) if cfg.save_margins else None
    trainer = RewardTrainer(
        model=model, args=args,
        train_dataset=PairDataset(train), eval_dataset=PairDataset(test) if test else None,
        data_collator=SplitCollator(train, test, tokenizer.pad_token_id, make=sharing.collator()),
        processing_class=tokenizer,
        compute_metrics=pair_accuracy,
        callbacks=run_callbacks(out_dir, resumed_step, sink, args.process_index == 0, cfg.keep_checkpoints)
        + list(extra_callbacks),
        spec=spec, cfg=cfg, head=head, margin_fn=margin_fn, margin_sink=sink)
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)  # it prints logs to stdout, which carries only the manifest path
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:  # its default, under checkpoints/, goes when the run ends
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:  # None: no TENSORBOARD_LOGGING_DIR
            callback.logging_dir = str(out_dir / TENSORBOARD_DIR)
    return trainer


def _save(trainer, tokenizer, cfg: TrainConfig, out_dir: Path, pair_ids) -> list[dict[str, Any]]:
    """Final model in `save_pretrained` form (LoRA: merged model under model/, adapter under adapter/)."""
    model_dir = out_dir / "model"
    model = trainer.accelerator.unwrap_model(trainer.model)
    outputs = []
    if cfg.lora:
        for adapter in model.peft_config.values():  # loaded elsewhere by this name, not this machine's cache path
            adapter.base_model_name_or_path = models.portable_name(cfg.backbone)
        model.save_pretrained(out_dir / "adapter", safe_serialization=True)
        tokenizer.save_pretrained(out_dir / "adapter")  # the pad token the head was trained with travels too
        outputs += _folder_outputs(out_dir, "adapter")
        model = model.merge_and_unload()
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    outputs += _folder_outputs(out_dir, "model")
    if (out_dir / LOG_FILE).exists():
        rows = sum(1 for line in (out_dir / LOG_FILE).read_text().splitlines() if line.strip())
        outputs.append(artifacts.describe_output(out_dir, LOG_FILE, rows=rows))
    if trainer.margin_sink is not None:
        rows = trainer.margin_sink.merge(out_dir / MARGINS_FILE)
        outputs.append(artifacts.describe_output(out_dir, MARGINS_FILE, rows=rows))
    return outputs


def _folder_outputs(out_dir: Path, folder: str) -> list[dict[str, Any]]:
    """Every file of a saved model folder (weights, config, tokenizer): a stage that loads the model checks
    each against its hash, so none can be swapped unseen. README.md (peft writes one) is replaced and listed by
    `_write_cards`."""
    return [artifacts.describe_output(out_dir, f"{folder}/{p.name}")
            for p in sorted((out_dir / folder).iterdir()) if p.is_file() and p.name != "README.md"]


def _write_cards(cfg: TrainConfig, loss: str, metrics: dict[str, Any], pairs_art, record: dict[str, Any], tokenizer,
                 out_dir: Path) -> list[dict[str, Any]]:
    """model/README.md (and adapter/README.md with --lora): the model card (`train/card.py`)."""
    from aplot_cli.train import card

    templated = formatting.uses_chat_template(tokenizer, cfg.chat_template)
    written = []
    for folder, library in (("model", "transformers"), *((("adapter", "peft"),) if cfg.lora else ())):
        text = card.card_text(cfg, loss, metrics, pairs_art.manifest, record["inputs"], templated, library,
                              cfg.push_to_hub)
        (out_dir / folder / "README.md").write_text(text, encoding="utf-8")
        written.append(artifacts.describe_output(out_dir, f"{folder}/README.md"))
    return written


def check_model_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ArtifactError(f"{path} holds no saved model", hint="re-run `aplot train-rm`")
