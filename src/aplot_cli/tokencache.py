"""Token ids remembered by content, so a second run, another seed or another rank tokenises nothing.

`TokenMemo.encode_many` is `formatting.encode_many` (ids, token types, truncation flags) looked up first in a
`TokenStore`: one SQLite file (`cachefile.CacheFile`: a damaged file is moved aside and the cache starts
empty) under `$APLOT_CACHE/tokens` for train-rm (`token_cache_dir`), or beside a frozen backbone's features
for eval-rm's fast path. A text's key is sha256 of (the tokenizer's identity, `max_length`, the
chat-template switch, the prompt, its messages, the response); the identity hashes everything
`formatting.encode` reads from the tokenizer (its serialised vocabulary, merges, normalizer and
post-processor, its chat template, its class), the formatting code itself and the library versions, so a
changed template, tokenizer or truncation rule misses instead of serving stale ids. Only the `aplot`
convention is remembered (eval-rm's `model` convention is encoded afresh)."""

from __future__ import annotations

import gc
import hashlib
import json
import sqlite3
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from aplot_cli import formatting, models
from aplot_cli.cachefile import CacheFile, check_folder, select_in

FILE = "tokens.sqlite"
_IDS = np.dtype("<i4")
_LITTLE = sys.byteorder == "little" and memoryview(b"\0\0\0\0").cast("i").itemsize == 4  # every vocabulary aplot loads is far below 2**31 ids; half the bytes of int64


def default_dir() -> Path:
    return models.cache_root() / "tokens"


def check_dir(directory: str | Path | None, flag: str = "--token-cache-dir") -> None:
    """A ConfigError now (before an out-dir is touched) when the folder cannot hold the cache."""
    check_folder(Path(directory) if directory else default_dir(), "token cache", flag, file=FILE)


class TokenStore:
    """Encodings by key: the ids as little-endian int32 bytes, the token types as runs ((value, count) int32
    pairs: a text pair's types are two runs, so they are stored and rebuilt in a few bytes and list products),
    and the two truncation flags."""

    def __init__(self, directory: Path, flag: str = "--token-cache-dir"):
        self.path = Path(directory) / FILE
        self.store = CacheFile(
            self.path,
            label="token cache",
            flag=flag,
            schema=(
                "CREATE TABLE IF NOT EXISTS encodings (key TEXT PRIMARY KEY, ids BLOB, type_runs BLOB, "
                "prompt_cut INTEGER, response_cut INTEGER)",
            ),
        )

    def get_many(self, keys: list[str]) -> dict[str, formatting.Encoded]:
        """The remembered encodings of `keys`; a row whose ids are not whole int32 values, or whose token type
        runs do not cover them exactly, is left out (computed again)."""

        def read(db: sqlite3.Connection) -> dict[str, formatting.Encoded]:
            found = {}
            for key, ids, runs, prompt_cut, response_cut in select_in(
                db, "SELECT key, ids, type_runs, prompt_cut, response_cut FROM encodings WHERE key", keys
            ):
                if not isinstance(ids, bytes) or len(ids) % 4:
                    continue
                types = None
                if runs is not None:
                    types = _from_runs(runs, len(ids) // 4)
                    if types is None:
                        continue
                found[key] = formatting.Encoded(
                    _int32s(ids), types, bool(prompt_cut), bool(response_cut)
                )
            return found

        with _no_gc():  # thousands of small lists: the collector would rescan the heap many times over
            return self.store.run(read)

    def put_many(self, items: list[tuple[str, formatting.Encoded]]) -> None:
        rows = [
            (
                key,
                np.asarray(enc.input_ids, dtype=_IDS).tobytes(),
                None if enc.token_type_ids is None else _to_runs(enc.token_type_ids),
                int(enc.prompt_truncated),
                int(enc.response_truncated),
            )
            for key, enc in items
        ]

        def write(db: sqlite3.Connection) -> None:
            with db:
                db.executemany("INSERT OR REPLACE INTO encodings VALUES (?, ?, ?, ?, ?)", rows)

        self.store.run(write)

    def close(self) -> None:
        self.store.close()


@contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused (the objects made here hold no cycles), restored as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _framed(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(8, "little") + data


def _int32s(blob: bytes) -> list[int]:
    """The little-endian int32 values of a blob (a memoryview on a little-endian machine: a few times faster
    than numpy for the short rows a cache holds)."""
    if _LITTLE:
        return memoryview(blob).cast("i").tolist()
    return np.frombuffer(blob, dtype=_IDS).tolist()


def _to_runs(values: list[int]) -> bytes:
    runs: list[int] = []
    for value in values:
        if runs and runs[-2] == value:
            runs[-1] += 1
        else:
            runs += [value, 1]
    return np.asarray(runs, dtype=_IDS).tobytes()


def _from_runs(blob, length: int) -> list[int] | None:
    """The values `_to_runs` stored, or None when the blob is not whole (value, count) pairs summing to
    `length`."""
    if not isinstance(blob, bytes) or len(blob) % 8:
        return None
    pairs = struct.unpack(f"<{len(blob) // 4}i", blob)  # a few runs: faster than any array view
    values: list[int] = []
    for value, count in zip(pairs[::2], pairs[1::2], strict=True):
        if count < 1:
            return None
        values += [value] * count
    return values if len(values) == length else None


def tokenizer_identity(tokenizer) -> str | None:
    """sha256 of what `formatting.encode` reads from a tokenizer (its full serialised vocabulary, merges,
    normalizer and post-processor, its chat template, its class), the formatting code itself and the
    library versions; None for a tokenizer without a serialisable backend (then nothing is remembered). The
    same before and after the tokenizer is called."""
    import tokenizers
    import transformers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    # Truncation and padding are call settings the backend keeps from its last call (every call sets its own,
    # and aplot truncates itself): cleared, so the identity does not depend on what was called before.
    backend.no_truncation()
    backend.no_padding()
    digest = hashlib.sha256(backend.to_str().encode())
    for part in (
        type(tokenizer).__name__,
        str(getattr(tokenizer, "chat_template", None)),
        transformers.__version__,
        tokenizers.__version__,
        Path(formatting.__file__).read_text(encoding="utf-8"),
    ):
        digest.update(b"\x00" + part.encode())
    return digest.hexdigest()[:32]


class TokenMemo:
    """`formatting.encode_many` (and `formatting.encode`, for one text) remembered in a `TokenStore`: what is
    cached is read back, the rest encoded in one batched call and kept until `flush`. `hits` and `misses`
    count texts."""

    def __init__(self, store: TokenStore | None, tokenizer):
        self.store, self.identity = store, tokenizer_identity(tokenizer)
        self.pending: list[tuple[str, formatting.Encoded]] = []
        self._base: tuple | None = None  # ((max_length, chat_template), the digest of the fixed part)
        self.hits = self.misses = 0

    def key(self, prompt: str, response: str, max_length: int, prompt_messages: Any, chat_template: bool) -> str:
        """sha256 of the identity, `max_length`, the template switch and the texts, each text prefixed by its
        length (so no two inputs hash the same bytes); messages given as a list are hashed as sorted JSON."""
        return self.keys([prompt], [response], max_length, [prompt_messages], chat_template)[0]

    def keys(self, prompts: list[str], responses: list[str], max_length: int, prompt_messages: list[Any],
             chat_template: bool) -> list[str]:
        """`key` of each text. A prompt's part of the digest is computed once and copied for each of its
        responses (a pair's two sides, a prompt's n samples): the same bytes, so the same keys."""
        setting = (max_length, bool(chat_template))
        if self._base is None or self._base[0] != setting:
            self._base = (setting, hashlib.sha256(f"{self.identity}|{max_length}|{int(setting[1])}".encode()))
        base, heads, out = self._base[1], {}, []
        for prompt, response, given in zip(prompts, responses, prompt_messages, strict=True):
            if given is None:
                messages = "\x00none"
            elif isinstance(given, str):
                messages = given
            else:
                messages = "\x00json" + json.dumps(list(given), sort_keys=True)
            head = heads.get((prompt, messages))
            if head is None:
                head = heads[(prompt, messages)] = base.copy()
                head.update(_framed(prompt) + _framed(messages))
            digest = head.copy()
            digest.update(_framed(response))
            out.append(digest.hexdigest())
        return out

    def encode_many(
        self,
        tokenizer,
        prompts: list[str],
        responses: list[str],
        max_length: int,
        prompt_messages: list[Any] | None = None,
        chat_template: bool = True,
    ) -> list[formatting.Encoded]:
        prompts, responses = list(prompts), list(responses)
        messages = list(prompt_messages) if prompt_messages is not None else [None] * len(prompts)
        if self.identity is None or self.store is None:
            self.misses += len(prompts)
            return formatting.encode_many(tokenizer, prompts, responses, max_length, messages, chat_template)
        keys = self.keys(prompts, responses, max_length, messages, chat_template)
        found = self.store.get_many(list(dict.fromkeys(keys)))
        missing = [i for i, key in enumerate(keys) if key not in found]
        computed = formatting.encode_many(
            tokenizer,
            [prompts[i] for i in missing],
            [responses[i] for i in missing],
            max_length,
            [messages[i] for i in missing],
            chat_template,
        )
        for i, enc in zip(missing, computed, strict=True):
            found[keys[i]] = enc
        self.pending += [(keys[i], enc) for i, enc in zip(missing, computed, strict=True)]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        return [found[key] for key in keys]

    def __call__(
        self,
        tokenizer,
        prompt: str,
        response: str,
        max_length: int,
        prompt_messages: Any = None,
        chat_template: bool = True,
    ) -> formatting.Encoded:
        return self.encode_many(tokenizer, [prompt], [response], max_length, [prompt_messages], chat_template)[0]

    def flush(self) -> None:
        if self.pending and self.store is not None:
            self.store.put_many(self.pending)
        self.pending = []


@contextmanager
def remembered(directory: str | Path | None, tokenizer, flag: str = "--token-cache-dir") -> Iterator[TokenMemo]:
    """A `TokenMemo` on the store in `directory` (None: `default_dir()`); what it computed is stored on exit."""
    store = TokenStore(Path(directory) if directory else default_dir(), flag=flag)
    memo = TokenMemo(store, tokenizer)
    try:
        yield memo
        memo.flush()
    finally:
        store.close()
        memo.store = None
