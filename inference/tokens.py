"""Counting prompt tokens in the web tier, with the `tokenizers` library alone.

The web tier checks every prompt against the checkpoint's context at submission. Importing the
engine for that would load torch and transformers (about 500 MB) into every web process, so the
count is made here from the checkpoint's own tokenizer files, the same way the engine encodes
(no special tokens added; an empty prompt starts from <|endoftext|>). A test checks the counts
match the engine's on varied prompts.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

EOS_TOKEN = "<|endoftext|>"
_CACHE_SIZE = 16

_lock = threading.Lock()
_loaded: OrderedDict[tuple[str, float], Tokenizer] = OrderedDict()
_fingerprints: dict[tuple[str, float], str] = {}  # keyed like _loaded


def _build(folder: Path) -> Tokenizer:
    if (folder / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    # The original GPT-2 release ships vocab.json + merges.txt: byte-level BPE, no prefix space.
    tokenizer = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([EOS_TOKEN])
    return tokenizer


def _tokenizer(folder: Path) -> Tokenizer:
    source = folder / "tokenizer.json"
    if not source.is_file():
        source = folder / "vocab.json"
    # Keyed by modification time too: re-importing a checkpoint into the same folder is seen.
    key = (str(folder), source.stat().st_mtime)
    with _lock:
        tokenizer = _loaded.get(key)
        if tokenizer is not None:
            _loaded.move_to_end(key)
            return tokenizer
    tokenizer = _build(folder)
    with _lock:
        _loaded[key] = tokenizer
        while len(_loaded) > _CACHE_SIZE:
            _loaded.popitem(last=False)
    return tokenizer


def count_prompt_tokens(folder: Path | str, prompt: str) -> int:
    """Tokens the engine will feed for `prompt` from the checkpoint at `folder`."""
    ids = _tokenizer(Path(folder).resolve()).encode(prompt, add_special_tokens=False).ids
    return len(ids) or 1


def token_ids(folder: Path | str, text: str) -> list[int]:
    """`text` as the checkpoint at `folder` tokenizes it (no special tokens), for watermark scoring."""
    return list(_tokenizer(Path(folder).resolve()).encode(text, add_special_tokens=False).ids)


def vocabulary_fingerprint(folder: Path | str) -> str:
    """A hash of the tokenizer's vocabulary: checkpoints that tokenize alike share it.

    Scoring a text once per distinct tokenizer (not per checkpoint) keeps the number of tests,
    and so the bar each must clear, as low as it can be.
    """
    folder = Path(folder).resolve()
    tokenizer = _tokenizer(folder)
    source = folder / "tokenizer.json"
    key = (str(folder), (source if source.is_file() else folder / "vocab.json").stat().st_mtime)
    with _lock:
        known = _fingerprints.get(key)
    if known is None:
        vocabulary = sorted(tokenizer.get_vocab(with_added_tokens=True).items())
        known = hashlib.sha256(repr(vocabulary).encode()).hexdigest()
        with _lock:
            _fingerprints[key] = known
    return known
