"""Every read of checkpoints and their weights. Who may use a checkpoint is agreements' to say."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404

from accounts.models import LAB_ROLES, User
from accounts.permissions import require_role, role_of
from models_registry.models import Checkpoint


def checkpoint_list(*, user: User) -> QuerySet[Checkpoint]:
    """The four stages, smallest first, for anyone signed in to an organisation."""
    if role_of(user) is None:
        raise Http404
    return Checkpoint.objects.order_by("parameter_count")


def checkpoint_get(*, user: User, slug: str) -> Checkpoint:
    """One checkpoint's registry page: lab staff only."""
    require_role(user, *LAB_ROLES)
    checkpoint = Checkpoint.objects.filter(slug=slug).first()
    if checkpoint is None:
        raise Http404
    return checkpoint


def checkpoints_by_slug(slugs: list[str]) -> list[Checkpoint]:
    """The checkpoints named, in the order given; a ValidationError names the unknown ones and the known."""
    found = {c.slug: c for c in Checkpoint.objects.filter(slug__in=set(slugs))}
    unknown = [slug for slug in dict.fromkeys(slugs) if slug not in found]
    if unknown:
        known = ", ".join(Checkpoint.objects.order_by("parameter_count").values_list("slug", flat=True))
        names = ", ".join(repr(slug) for slug in unknown)
        raise ValidationError(f"No checkpoint called {names}; there are: {known}.")
    return [found[slug] for slug in dict.fromkeys(slugs)]


# --- Weights on disk -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsCheck:
    """The registered weights of one checkpoint compared with the file on disk now."""

    checkpoint: Checkpoint
    ok: bool
    found_sha256: str
    problem: str = ""


def checkpoint_weights_check(checkpoint: Checkpoint) -> WeightsCheck:
    """Re-hash a checkpoint's registered weights file; any difference is drift."""
    from models_registry.weights import WEIGHTS_FILE, file_sha256

    path = Path(checkpoint.weights_path) / WEIGHTS_FILE
    try:
        found = file_sha256(path)
    except OSError as exc:
        return WeightsCheck(checkpoint, ok=False, found_sha256="", problem=f"{path} cannot be read: {exc.strerror}")
    if found != checkpoint.weights_sha256:
        return WeightsCheck(
            checkpoint,
            ok=False,
            found_sha256=found,
            problem=f"{path} has SHA-256 {found}, but {checkpoint.weights_sha256} is registered",
        )
    return WeightsCheck(checkpoint, ok=True, found_sha256=found)
