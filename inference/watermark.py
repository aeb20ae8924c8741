"""The keyed green-list watermark every sampled token carries, and its detector.

The scheme is Kirchenbauer et al., "A Watermark for Large Language Models" (2023), with a context
of one token: the lab's key and the previous token split the vocabulary into a green quarter
(GAMMA) and the rest, and sampling adds DELTA to the green tokens' logits. Any text can then be
scored without the model: count how many of its tokens are green for their predecessor, and a
one-sided z-test says how unlikely that many is for text written without the key.

The green list comes from a keyed 32-bit integer hash rather than from a seeded random permutation
(as transformers' WatermarkLogitsProcessor does), so the detector needs neither torch nor a model:
it runs in the web tier on token ids from `tokenizers`. The engine computes the same hash on whole
vocabularies at once: the token half once per vocabulary, then per step only `combine` (two multiply
rounds in 32-bit arithmetic, which torch's int32 tensors wrap exactly as `& MASK32` does here).

This module imports neither Django nor torch.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SCHEME = "green-list-v1"
SCHEME_DESCRIPTION = "green list (Kirchenbauer et al. 2023), context 1 token, gamma 0.25, delta 2.0"
GAMMA = 0.25
DELTA = 2.0
# z above 4 is a one-sided p-value of 3.2e-5 for a single key and tokenizer: human text is
# flagged about once in 30,000 checks, and a real sample of 100 tokens scores far above it.
Z_THRESHOLD = 4.0
# Fewer distinct (previous, next) token pairs than this leave too little to tell either way.
MIN_SCORED_TOKENS = 16

MASK32 = 0xFFFFFFFF
# Odd multiplier below 2**31: a product with a 32-bit value fits a signed 64-bit integer, so
# torch's int64 arithmetic and Python's arbitrary integers agree bit for bit.
MULTIPLIER = 0x45D9F3B
GREEN_BELOW = int(GAMMA * 2**32)
assert GREEN_BELOW <= 2**31  # the engine tests it on signed 32-bit values


def mix32(x: int) -> int:
    """A 32-bit avalanche hash (shift-xor, multiply); `mix32_tensor` in the engine is the same."""
    x &= MASK32
    x ^= x >> 16
    x = (x * MULTIPLIER) & MASK32
    x ^= x >> 16
    x = (x * MULTIPLIER) & MASK32
    x ^= x >> 16
    return x


def combine(token_part: int, previous_part: int) -> int:
    """The green-list hash of a (previous, token) pair from its two mixed halves."""
    x = ((token_part ^ previous_part) * MULTIPLIER) & MASK32
    x ^= x >> 16
    return (x * MULTIPLIER) & MASK32


@dataclass(frozen=True)
class WatermarkKey:
    """A lab secret turned into the two 32-bit salts the green list needs, and a public id.

    The id is a hash of the secret: it names the key on samples and in verdicts without revealing it.
    """

    key_id: str
    previous_salt: int
    token_salt: int

    @classmethod
    def from_secret(cls, secret: str) -> WatermarkKey:
        if not secret:
            raise ValueError("a watermark key must not be empty")
        digest = hmac.new(secret.encode(), b"modelpact green list", hashlib.sha256).digest()
        key_id = hashlib.sha256(b"modelpact watermark key id\0" + secret.encode()).hexdigest()[:12]
        return cls(
            key_id=key_id,
            previous_salt=int.from_bytes(digest[:4], "big"),
            token_salt=int.from_bytes(digest[4:8], "big"),
        )

    def previous_part(self, previous: int) -> int:
        """The half of the hash that depends on the previous token."""
        return mix32(previous ^ self.previous_salt)

    def token_part(self, token: int) -> int:
        """The half that depends on the candidate token (the engine precomputes it per vocabulary)."""
        return mix32(token ^ self.token_salt)

    def is_green(self, previous: int, token: int) -> bool:
        return combine(self.token_part(token), self.previous_part(previous)) < GREEN_BELOW


@dataclass(frozen=True)
class Score:
    """How a token sequence scores against one key."""

    key_id: str
    tokens_scored: int
    green_tokens: int
    z_score: float
    p_value: float

    @property
    def green_fraction(self) -> float:
        return self.green_tokens / self.tokens_scored if self.tokens_scored else 0.0


def score(token_ids: Sequence[int], key: WatermarkKey) -> Score:
    """Score `token_ids` against `key`.

    Each distinct (previous, next) pair counts once: a text repeating one phrase cannot pile up
    green tokens (nor red ones), which keeps the z-test honest on repetitive text.
    """
    seen: set[tuple[int, int]] = set()
    green = 0
    for previous, token in itertools.pairwise(token_ids):
        if (previous, token) in seen:
            continue
        seen.add((previous, token))
        green += key.is_green(previous, token)
    scored = len(seen)
    if not scored:
        return Score(key.key_id, 0, 0, 0.0, 1.0)
    z = (green - GAMMA * scored) / math.sqrt(scored * GAMMA * (1 - GAMMA))
    return Score(key.key_id, scored, green, z, _upper_tail(z))


def _upper_tail(z: float) -> float:
    """P(Z >= z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass(frozen=True)
class Verdict:
    """The answer for one text: "watermarked", "not watermarked" or "too short to tell"."""

    WATERMARKED = "watermarked"
    NOT_WATERMARKED = "not watermarked"
    TOO_SHORT = "too short to tell"

    outcome: str
    best: Score
    tests: int  # (key, tokenizer) pairs tried; the p-value is corrected for them

    @property
    def p_value(self) -> float:
        """The best score's p-value times the number of tests (Bonferroni), at most 1."""
        return min(1.0, self.best.p_value * self.tests)


def verdict(scores: Iterable[Score]) -> Verdict:
    """Combine the scores of one text under every (key, tokenizer) pair tried.

    Trying several keys or tokenizers is several tests: the threshold is raised so that the
    chance of flagging unwatermarked text stays what one test at Z_THRESHOLD allows.
    """
    scores = list(scores)
    if not scores:
        raise ValueError("no scores to combine")
    tests = len(scores)
    enough = [s for s in scores if s.tokens_scored >= MIN_SCORED_TOKENS]
    if not enough:
        return Verdict(Verdict.TOO_SHORT, max(scores, key=lambda s: s.tokens_scored), tests)
    best = max(enough, key=lambda s: s.z_score)
    outcome = Verdict.WATERMARKED if best.p_value * tests <= _upper_tail(Z_THRESHOLD) else Verdict.NOT_WATERMARKED
    return Verdict(outcome, best, tests)
