"""Rules on free text that several apps apply, at the edge (forms, serializers) and again in services.

Lengths people are held to count what a reader sees: a purpose of 25 zero-width spaces is empty.
"""

from __future__ import annotations

import unicodedata

from django.core.exceptions import ValidationError

PURPOSE_MIN_CHARS = 20
PURPOSE_MAX_CHARS = 4000

# Characters that render as nothing but are neither whitespace nor format characters (category Cf)
# to Unicode: the combining grapheme joiner, the Hangul fillers, the Khmer inherent vowels, the
# Mongolian vowel separator (Cf only since Unicode 6.3) and the Braille blank.
_INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180e\u2800\u3164\uffa0")
# Line breaks and tabs are part of ordinary text; any other control character is not.
_ALLOWED_CONTROLS = frozenset("\n\r\t")


def _is_invisible(char: str) -> bool:
    """Whitespace, format characters (U+200B, U+2060, U+FEFF, U+00AD, bidi marks...), unassigned,
    private-use and surrogate code points, and the fillers above."""
    return char.isspace() or char in _INVISIBLE or unicodedata.category(char)[0] in {"Z", "C"}


def visible_length(text: str) -> int:
    """How many characters of `text` a reader sees, counting a gap between words as one.

    After NFKC normalisation, a letter with its accents counts once (combining marks add nothing,
    so a run of bare accents is not a word), format characters count nothing, and a run of
    whitespace counts one between visible characters and nothing at either end.
    """
    count = 0
    gap = False  # whitespace seen since the last visible character
    for char in unicodedata.normalize("NFKC", text):
        if char.isspace() or unicodedata.category(char) in {"Zs", "Zl", "Zp"}:
            gap = True
        elif not _is_invisible(char) and unicodedata.category(char)[0] != "M":
            count += 2 if gap and count else 1
            gap = False
    return count


def strip_invisible(text: str) -> str:
    """`text` without whitespace or invisible characters at either end; inside, it is kept as written
    (a zero-width joiner inside an emoji or a word is part of it)."""
    start, end = 0, len(text)
    while start < end and _is_invisible(text[start]):
        start += 1
    while end > start and _is_invisible(text[end - 1]):
        end -= 1
    return text[start:end]


def clean_purpose(purpose: object, *, field: str = "purpose") -> str:
    """The research purpose as stored: 20 to 4,000 characters, at least 20 of them visible.

    Raises a ValidationError keyed by `field`, with a message that says what to change.
    """
    if not isinstance(purpose, str):
        if purpose is not None:
            raise ValidationError({field: "The purpose must be text."})
        purpose = ""
    written = len(purpose.strip())
    purpose = strip_invisible(purpose)
    if any(unicodedata.category(char) == "Cc" and char not in _ALLOWED_CONTROLS for char in purpose):
        raise ValidationError({field: "The purpose contains control characters; remove them and send it again."})
    visible = visible_length(purpose)
    if visible < PURPOSE_MIN_CHARS:
        message = f"Describe the research purpose in at least {PURPOSE_MIN_CHARS} characters."
        if visible != written:  # say why a long enough looking text is short
            message += f" It has {visible} visible character{'' if visible == 1 else 's'}."
        raise ValidationError({field: message})
    if len(purpose) > PURPOSE_MAX_CHARS:
        raise ValidationError({field: f"Keep the purpose to 4,000 characters (it has {len(purpose):,})."})
    return purpose


def clean_reason(reason: str, *, required: bool, what: str) -> str:
    """A reason people will read (a rejection, an embargo): at most 2,000 characters; `what` says who reads it."""
    reason = (reason or "").strip()
    if required and len(reason) < 5:
        raise ValidationError({"reason": f"Give a reason (at least a few words); {what}."})
    if len(reason) > 2000:
        raise ValidationError({"reason": "Keep the reason under 2,000 characters."})
    return reason
