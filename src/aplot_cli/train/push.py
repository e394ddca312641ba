"""`train-rm --push-to-hub REPO`: upload a finished run to the Hugging Face Hub with huggingface_hub's own client.

`check` runs before training and before the out-dir is touched: a malformed repo id, `HF_HUB_OFFLINE`, no
token, an unreachable Hub or a token the Hub refuses stop the run there (nothing trained in vain). `push` runs
after the manifest is written, so the local run is finished whatever the upload does: one commit
(`HfApi.create_repo` + `HfApi.create_commit`) with

    model/*       at the repo root (the merged model, tokenizer and model card: `from_pretrained(REPO)` loads it)
    adapter/*     under adapter/ (--lora: `PeftModel.from_pretrained(base, REPO, subfolder="adapter")`)
    manifest.json, metrics.json, run_config.json, report.md   under aplot/ (provenance)"""

from __future__ import annotations

import re
from pathlib import Path

from aplot_cli.errors import ConfigError, HubUnreachableError, TrainingError

_REPO_ID = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
PROVENANCE = ("manifest.json", "metrics.json", "run_config.json", "report.md")


def later_hint(out_dir: Path | str, repo: str) -> str:
    return (f"train without --push-to-hub and upload the finished run later, e.g. `hf upload {repo} "
            f"{Path(out_dir) / 'model'} .`")


def check(repo: str | None, out_dir: Path) -> None:
    """Refuse before training when the upload could not happen (module docstring)."""
    if not repo:
        return
    from aplot_cli import hub

    if not _REPO_ID.fullmatch(repo) or ".." in repo or "--" in repo:
        raise ConfigError(f"--push-to-hub {repo!r} is not a Hub repo id",
                          hint="use `name` or `namespace/name` (letters, digits, `-`, `_`, `.`)")
    if hub.offline_requested():
        raise HubUnreachableError("--push-to-hub needs the Hugging Face Hub, but HF_HUB_OFFLINE is set",
                                  hint="unset HF_HUB_OFFLINE, or " + later_hint(out_dir, repo))
    from huggingface_hub import get_token

    if not get_token():
        raise ConfigError("--push-to-hub needs a Hugging Face token with write access, and none is set",
                          hint="run `hf auth login` or set HF_TOKEN, or " + later_hint(out_dir, repo))
    if not hub.reachable():
        host, _ = hub.endpoint()
        raise HubUnreachableError(f"--push-to-hub: the Hugging Face Hub ({host}) cannot be reached from here",
                                  hint="check the network, or " + later_hint(out_dir, repo))
    from huggingface_hub import HfApi

    try:
        HfApi().whoami()
    except Exception as exc:  # the client raises several types (HTTP 401, connection errors)
        raise ConfigError(f"--push-to-hub: the Hub refused the token ({type(exc).__name__}: {exc})",
                          hint="log in again with `hf auth login`, or " + later_hint(out_dir, repo)) from exc


def files(out_dir: Path) -> dict[str, Path]:
    """{path in the repo: local file} for a finished run (module docstring)."""
    out: dict[str, Path] = {}
    for folder, prefix in (("model", ""), ("adapter", "adapter/")):
        if (out_dir / folder).is_dir():
            out.update({prefix + f.relative_to(out_dir / folder).as_posix(): f
                        for f in sorted((out_dir / folder).rglob("*")) if f.is_file()})
    out.update({f"aplot/{name}": out_dir / name for name in PROVENANCE if (out_dir / name).is_file()})
    return out


def push(out_dir: Path, repo: str, private: bool, message: str) -> str:
    """Upload the run in one commit; returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
                  for name, path in files(out_dir).items()]
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        commit = api.create_commit(repo, operations=operations, commit_message=message, repo_type="model")
    except Exception as exc:  # network, permissions, quota: the run itself is finished and kept
        raise TrainingError(f"--push-to-hub {repo}: the upload failed ({type(exc).__name__}: {exc}); the run is "
                            f"finished in {out_dir}", hint=f"upload it again with `hf upload {repo} {out_dir / 'model'} .`"
                            ) from exc
    return commit.commit_url
