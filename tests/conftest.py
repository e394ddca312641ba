"""Shared test fixtures: offline environment, the real shared data (skipped when absent), and tiny
models built locally and loaded by path, as a user would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def aplot_cache(tmp_path_factory) -> Path:
    """The test session's own aplot cache (embeddings), linked to the user's converted models (SmolLM2);
    a module-scoped fixture that runs stages sets APLOT_CACHE to it itself."""
    cache = tmp_path_factory.getbasetemp() / "aplot-cache"
    models_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aplot" / "models"
    (cache).mkdir(exist_ok=True)
    link = cache / "models"
    if not link.exists():
        models_dir.mkdir(parents=True, exist_ok=True)
        link.symlink_to(models_dir, target_is_directory=True)
    return cache


@pytest.fixture(autouse=True)
def _isolated_cache(aplot_cache, monkeypatch):
    """Each test session gets its own aplot cache (embeddings), but keeps the converted SmolLM2."""
    monkeypatch.setenv("APLOT_CACHE", str(aplot_cache))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (a fresh clone has no ../shared)")
    return SHARED_DATA


def _save_tiny(model, tokenizer, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with the MiniLM tokenizer, as a sequence-classification RM (1 label)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from aplot_cli import models

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(models.resolve("minilm-l6"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
                        num_labels=1, pad_token_id=tokenizer.pad_token_id)
    return _save_tiny(BertForSequenceClassification(config), tokenizer,
                      tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir() -> Path:
    from aplot_cli import models

    return Path(models.resolve("smollm2-135m"))


def _tiny_llama(tokenizer_dir: Path, model_class: str, **extra):
    """A 2-layer Llama (hidden 32) with SmolLM2's tokenizer and chat template, and its tokenizer."""
    import torch
    import transformers
    from transformers import AutoTokenizer, LlamaConfig

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **extra)
    return getattr(transformers, model_class)(config), tokenizer


@pytest.fixture(scope="session")
def tiny_llama_rm_dir(tmp_path_factory, smollm2_tokenizer_dir) -> Path:
    """A tiny Llama as a 1-label sequence-classification RM."""
    model, tokenizer = _tiny_llama(smollm2_tokenizer_dir, "LlamaForSequenceClassification", num_labels=1)
    return _save_tiny(model, tokenizer, tmp_path_factory.mktemp("tiny-llama-rm"))


@pytest.fixture(scope="session")
def tiny_llama_lm_dir(tmp_path_factory, smollm2_tokenizer_dir) -> Path:
    """A tiny Llama causal LM (a PPO policy)."""
    from transformers import AutoTokenizer

    bos = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir).bos_token_id
    model, tokenizer = _tiny_llama(smollm2_tokenizer_dir, "LlamaForCausalLM", bos_token_id=bos,
                                   tie_word_embeddings=True)
    return _save_tiny(model, tokenizer, tmp_path_factory.mktemp("tiny-llama-lm"))


TINY_WORDS = ("<pad>", "<s>", "</s>", "<unk>", "a", "b", "c", "d", "e", "f", "g", "good")


@pytest.fixture(scope="session")
def tiny_vocab_lm_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama causal LM over a 12-word vocabulary (words split on spaces, no chat template): a
    policy that PPO can move in a few updates, and whose distribution a test can compare exactly."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(TINY_WORDS)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(TINY_WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    return _save_tiny(LlamaForCausalLM(config), tokenizer, tmp_path_factory.mktemp("tiny-vocab-lm"))


@pytest.fixture(scope="session")
def synthetic_pairs_dir(tmp_path_factory) -> Path:
    """A small synthetic pairs artifact (train/test/ood), made through the real stage entry point."""
    from aplot_cli import prepare
    from aplot_cli.config import PrepareConfig

    out = tmp_path_factory.mktemp("pairs") / "pairs"
    prepare.run(PrepareConfig(recipe="synthetic", synthetic_pairs=240, synthetic_ood_pairs=60, test_size=0.25),
                out)
    return out


def write_samples_artifact(out: Path, *, split: str = "test", n: int = 8, prompts_per_family: int = 4,
                           families: tuple[str, ...] = ("add_small", "choose_option", "copy_word"),
                           seed: int = 0) -> Path:
    """A samples artifact (`aplot sample`'s layout, written by its own writer) without a policy: each prompt
    gets n responses, the family's correct or wrong answer (distinct texts, "!" repeated after them), with
    the number passing varied from prompt to prompt (none and all included). Gold labels are the checker's."""
    import random

    import pandas as pd

    from aplot_cli import outdir, sample
    from aplot_cli.config import SampleConfig
    from aplot_cli.data import verifiable
    from aplot_cli.readers import samples

    rng = random.Random(seed)
    rows = []
    for family in families:
        for p, task in enumerate(verifiable.prompts(family, prompts_per_family, split, seed)):
            passing = (0, n)[p] if p < 2 else rng.randint(1, n - 1)
            chosen = set(rng.sample(range(n), passing))
            for k in range(n):
                response = (task.answer if k in chosen else task.wrong) + "!" * k
                assert verifiable.verify(task.prompt, response) == (k in chosen), (task, response)
                rows.append({"prompt_id": verifiable.prompt_id(task.prompt), "family": family, "split": split,
                             "prompt": task.prompt, "sample": k, "response": response,
                             "gold": verifiable.verify(task.prompt, response), "n_tokens": len(response.split()) + 1,
                             "eos": True, "prompt_tokens": 10})
    frame = pd.DataFrame(rows)
    cfg = SampleConfig(policy="fixture/no-policy", families=families, split=split, n=n, prompts=prompts_per_family * len(families), seed=seed)
    outdir.prepare_out_dir(out, stage=samples.STAGE)
    sample.write_artifact(cfg, out, frame)
    return out


@pytest.fixture
def samples_artifact():
    """`write_samples_artifact` as a fixture."""
    return write_samples_artifact


@pytest.fixture(autouse=True)
def _console_not_left_quiet():
    """A CLI call with --quiet sets the console quiet for the process: each test starts from the default."""
    from aplot_cli import console

    if console.is_quiet():
        console.set_quiet(False)
    yield
