"""Template filters for text written from parts (a refusal, a reason someone typed)."""

from __future__ import annotations

import json

from django import template
from django.utils.text import capfirst

register = template.Library()


@register.filter
def json_pretty(data: object) -> str:
    """Stored JSON as JSON (double quotes, indented, keys sorted), not Python's repr of it."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str)


@register.filter
def full_stop(text: object) -> str:
    """`text` ending in one full stop: a reason typed with its own ("being investigated.") gets no second."""
    words = str(text or "").strip()
    return words if not words or words[-1] in ".!?" else f"{words}."


@register.filter
def sentence(text: object) -> str:
    """`text` as one sentence: capitalised, ending in one full stop."""
    return capfirst(full_stop(text))
