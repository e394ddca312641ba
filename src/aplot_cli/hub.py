"""Is the Hugging Face Hub reachable? One quick TCP probe before a hub dataset is loaded, so an offline
machine fails in seconds with its own error instead of spending ~25 s in the libraries' retries.

Nothing here runs at import; no request is made when `HF_HUB_OFFLINE` is set or the id is a local path."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


def offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    host, port = endpoint()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Make datasets / huggingface_hub use their local caches only, for the rest of this process: the libraries
    imported already are switched; one imported later reads the environment (so a model load does not import
    datasets for this)."""
    import sys

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    if "datasets" in sys.modules:
        sys.modules["datasets"].config.HF_HUB_OFFLINE = True
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True


def check(dataset_id: str) -> bool:
    """False when `dataset_id` needs the hub and the hub cannot be reached (the process is then switched to
    the local cache only, so a cached dataset still loads at once); True otherwise."""
    if offline_requested() or Path(dataset_id).exists():
        return True
    if reachable():
        return True
    go_offline()
    return False
