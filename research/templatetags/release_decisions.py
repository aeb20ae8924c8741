"""The registry page's list of release decisions, fed from research.

The registry's checkpoint page belongs to agreements, which stands below research and cannot import it.
Its template loads this library instead, and the tag reads the decisions through research's own scoped
selector: no Python import points upward, and the page's view (and inference's kill switch, which
re-renders it) stay as they are.
"""

from __future__ import annotations

from typing import Any

from django import template

from models_registry.models import Checkpoint
from research.selectors.releases import release_decision_list

register = template.Library()


@register.inclusion_tag("research/_decision_registry.html", takes_context=True)
def checkpoint_release_decisions(context: dict[str, Any], checkpoint: Checkpoint) -> dict[str, Any]:
    """The checkpoint's release decisions, newest first, for lab staff (the registry page is theirs)."""
    user = context["request"].user
    return {"checkpoint": checkpoint, "decisions": release_decision_list(user=user, checkpoint=checkpoint)}
