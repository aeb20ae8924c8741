"""Provenance: the lab's watermark keys, and the check that says whether a text came from here.

A check scores the text's watermark under every key the lab has used and every distinct tokenizer
among the checkpoints, looks the text up in the near-duplicate index, and discloses each match
according to who asks (see `provenance_check`). It is audited with the text's SHA-256 and length
only: the text itself is never stored.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.models import LAB_ROLES, PARTNER_ROLES, User
from accounts.permissions import role_of
from audit import events
from audit.services import audit_append
from inference.models import Sample
from inference.selectors import SampleMatch, sample_matches
from inference.tokens import token_ids, vocabulary_fingerprint
from inference.watermark import Verdict, WatermarkKey, score, verdict
from models_registry.models import Checkpoint


@lru_cache(maxsize=4)
def _key(secret: str) -> WatermarkKey:
    return WatermarkKey.from_secret(secret)


def current_key() -> WatermarkKey:
    """The key new samples are watermarked with (WATERMARK_KEY)."""
    return _key(settings.WATERMARK_KEY)


def all_keys() -> list[WatermarkKey]:
    """Every key a stored sample may carry: the current one, then WATERMARK_PREVIOUS_KEYS."""
    return [current_key(), *(_key(secret) for secret in settings.WATERMARK_PREVIOUS_KEYS)]


MAX_TEXT_CHARS = 20_000
MATCH_LIMIT = 10


class Disclosure(StrEnum):
    """How much a check reveals about the samples it matches, by who asks."""

    FULL = "full"  # lab staff and auditors: every match, with job, organisation and sample
    OWN_ORGANIZATION = "own organization"  # partner users: their organisation's matches only
    PUBLIC = "public"  # anonymous: that a match exists, under which agreement, nothing else


@dataclass(frozen=True)
class MatchFound:
    """One stored sample the text matches; `sample` is None where the asker may not see it."""

    agreement_reference: str
    shared: int
    overlap: float
    sample: Sample | None


@dataclass(frozen=True)
class ProvenanceResult:
    text_sha256: str
    text_length: int
    verdict: Verdict
    disclosure: Disclosure
    matches: list[MatchFound]

    @property
    def key_id(self) -> str:
        return self.verdict.best.key_id


def text_refusal(text: object) -> str | None:
    """Why `text` cannot be checked, or None; the page's form and the API both ask this first."""
    if not isinstance(text, str):
        return "Send the text to check as a string."
    if not text.strip():
        return "Paste a text to check: it is empty."
    if len(text) > MAX_TEXT_CHARS:
        return f"The text is {len(text):,} characters long; check at most {MAX_TEXT_CHARS:,} at a time."
    if any(unicodedata.category(ch) == "Cc" and ch not in "\t\n\r" for ch in text):
        return "The text contains control characters (binary data?); paste plain text."
    return None


@transaction.atomic
def provenance_check(*, user: User | None, text: str) -> ProvenanceResult:
    """Score `text`'s watermark, look it up among stored samples, disclose by role, and audit the check.

    `user` is None for an anonymous caller. The audit row holds the text's SHA-256 and length only.
    Raises ValidationError for a text that `text_refusal` refuses.
    """
    refusal = text_refusal(text)
    if refusal:
        raise ValidationError(refusal, code="invalid_text")
    role = role_of(user)
    if role in LAB_ROLES:
        disclosure = Disclosure.FULL
    elif role in PARTNER_ROLES:
        disclosure = Disclosure.OWN_ORGANIZATION
    else:
        disclosure = Disclosure.PUBLIC

    found = verdict(score(ids, key) for ids in _tokenizations(text) for key in all_keys())
    own = user.membership.organization_id if user is not None and disclosure is Disclosure.OWN_ORGANIZATION else None
    matches = _disclosed(sample_matches(text=text, limit=MATCH_LIMIT, organization_id=own), disclosure)
    digest = hashlib.sha256(text.encode()).hexdigest()
    audit_append(
        actor=user,
        action=events.PROVENANCE_CHECKED,
        data={
            "text_sha256": digest,
            "text_length": len(text),
            "verdict": found.outcome,
            "z_score": round(found.best.z_score, 2),
            "matches": len(matches),
            "disclosure": str(disclosure),
        },
    )
    return ProvenanceResult(digest, len(text), found, disclosure, matches)


def _tokenizations(text: str) -> list[list[int]]:
    """The text's token ids under each distinct tokenizer among the checkpoints with weights."""
    folders: dict[str, str] = {}
    for path in Checkpoint.objects.exclude(weights_path="").values_list("weights_path", flat=True):
        try:
            folders.setdefault(vocabulary_fingerprint(path), path)
        except OSError:
            continue  # weights moved away; the other checkpoints still count
    return [token_ids(path, text) for path in folders.values()] or [[]]


def _disclosed(found: list[SampleMatch], disclosure: Disclosure) -> list[MatchFound]:
    """The matches with their agreement, and the sample itself where the asker may see it."""
    samples = Sample.objects.select_related(
        "job__organization", "job__checkpoint", "job__grant__agreement", "job__requester"
    ).in_bulk([match.sample_id for match in found])
    matches = []
    for match in found:
        sample = samples.get(match.sample_id)
        if sample is None:
            continue  # deleted since the lookup
        shown = sample if disclosure is not Disclosure.PUBLIC else None
        matches.append(MatchFound(sample.job.grant.agreement.reference, match.shared, match.overlap, shown))
    return matches
