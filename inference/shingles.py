"""Near-duplicate fingerprints of sample text, the same on every process and machine.

Text is reduced to words (NFKC, casefolded, runs of letters and digits), so spacing, case and
punctuation do not matter. Every run of K = 4 words is hashed to 64 bits and those with
hash % M == 0 (M = 2) are kept, about one per two words: four-word runs are rare enough across a
million samples that a lookup reads few rows, yet with one word in ten replaced about 66% of a
passage's runs survive, so a 45-word cut shares about 13 fingerprints with its source against the
3 a match needs (five-word runs or M = 3 lost 0.3-2% of such passages in simulation). Sampling by
value rather than position means a cut passage keeps exactly the fingerprints its source kept.

Imports no Django: the benchmark and bulk reindexing use `fingerprints_many`, which gives exactly
what `fingerprints` gives per text.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


K = 4  # words per shingle
M = 2  # keep one shingle hash in M
_MASK = (1 << 64) - 1
_P = 0x9E3779B97F4A7C15  # odd multiplier combining the words of a shingle (mod 2**64)
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8, person=b"mp-shingle").digest(), "little")


def _mix(z: int) -> int:
    # splitmix64's finaliser: every output bit depends on every input bit, so h % M samples evenly.
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _signed(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h  # PostgreSQL bigint is signed


def fingerprints(text: str) -> list[int]:
    """The kept shingle hashes of one text, sorted and distinct, as signed 64-bit ints."""
    hashes = [word_hash(w) for w in words(text)]
    kept = set()
    for start in range(len(hashes) - K + 1):
        h = 0
        for wh in hashes[start : start + K]:
            h = (h * _P + wh) & _MASK
        h = _mix(h)
        if h % M == 0:
            kept.add(_signed(h))
    return sorted(kept)


def _mix_array(z: np.ndarray) -> np.ndarray:
    import numpy as np

    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def fingerprints_many(texts: Iterable[str], cache: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`fingerprints` for many texts at once: (position of the text in `texts`, hash) pairs.

    Sorted by position then hash, distinct per text. `cache` maps words to their hashes and may be
    passed between calls so a large corpus hashes each distinct word once.
    """
    # Imported here: the web tier imports this module for `fingerprints`, and numpy costs it 20 MB.
    import numpy as np

    cache = {} if cache is None else cache
    ids: list[int] = []
    lengths: list[int] = []
    for text in texts:
        ws = words(text)
        lengths.append(len(ws))
        for w in ws:
            wid = cache.get(w)
            if wid is None:
                wid = cache[w] = word_hash(w)
            ids.append(wid)
    return _fingerprint_arrays(np.array(ids, dtype=np.uint64), np.array(lengths, dtype=np.int64))


def _fingerprint_arrays(word_hashes: np.ndarray, lengths: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(word_hashes)
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    if n < K:
        return empty
    count = n - K + 1
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(K):
            h = h * np.uint64(_P) + word_hashes[i : i + count]
        h = _mix_array(h)
    # A shingle belongs to the text it starts in, if it also ends there.
    ends = np.cumsum(lengths)
    text_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)[:count]
    inside = np.arange(count, dtype=np.int64) + K <= ends[text_of]
    keep = inside & (h % np.uint64(M) == 0)
    pos, kept = text_of[keep], h[keep].view(np.int64)
    order = np.lexsort((kept, pos))
    pos, kept = pos[order], kept[order]
    if len(pos) == 0:
        return empty
    distinct = np.ones(len(pos), dtype=bool)
    distinct[1:] = (pos[1:] != pos[:-1]) | (kept[1:] != kept[:-1])
    return pos[distinct], kept[distinct]
