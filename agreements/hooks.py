"""How apps above agreements hear that an agreement became active or ended, without agreements
importing them: an app registers a callback in its AppConfig.ready() (records seals the agreement's
record on each occasion). Callbacks run inside the service's transaction, so they queue their work
on commit."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from agreements.models import Agreement

Occasion = Literal["activated", "ended"]
AgreementCallback = Callable[["Agreement", Occasion], None]

_subscribers: list[AgreementCallback] = []


def subscribe(callback: AgreementCallback) -> None:
    """Call `callback(agreement, occasion)` whenever an agreement becomes active or ends."""
    if callback not in _subscribers:
        _subscribers.append(callback)


def agreement_milestone(agreement: Agreement, occasion: Occasion) -> None:
    for callback in _subscribers:
        callback(agreement, occasion)
