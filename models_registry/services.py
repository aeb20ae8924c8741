"""Writes to the registry: checkpoints' weights and status. Each write is atomic and audited."""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import Role, User
from accounts.permissions import require_role
from audit import events
from audit.services import audit_append
from core.tasks import task_send_on_commit
from core.validators import clean_reason
from models_registry.models import Checkpoint
from models_registry.weights import DEMO_SHAPES, GPT2Shape, WeightsError, WeightsInfo, inspect_checkpoint

# --- Weights ---------------------------------------------------------------------------------------

# Fixed seeds: a rebuilt demo checkpoint has the same bytes, so its registered SHA-256 stays valid.
DEMO_SEEDS = {slug: 2019 + index for index, slug in enumerate(DEMO_SHAPES)}
# Training steps per demo checkpoint: bigger ones take fewer, so all four train in about two minutes
# on two cores (smallest first, about half a minute each).
DEMO_TRAIN_STEPS = {"gpt2": 1000, "gpt2-medium": 500, "gpt2-large": 300, "gpt2-xl": 160}


def released_shape(checkpoint: Checkpoint) -> GPT2Shape:
    """The architecture of the released model behind a registry row."""
    return GPT2Shape(
        checkpoint.slug,
        n_layer=checkpoint.n_layer,
        n_embd=checkpoint.n_embd,
        n_head=checkpoint.n_head,
        n_positions=checkpoint.n_ctx,
        vocab_size=checkpoint.vocab_size,
        parameter_count=checkpoint.parameter_count,
    )


def shape_differences(info: WeightsInfo, shape: GPT2Shape) -> list[str]:
    """What differs between a checkpoint on disk and a wanted shape (None fields match anything)."""
    wanted = {
        "n_layer": shape.n_layer,
        "n_embd": shape.n_embd,
        "n_head": shape.n_head,
        "n_positions": shape.n_positions,
        "vocab_size": shape.vocab_size,
        "parameter_count": shape.parameter_count,
    }
    return [
        f"{field}={getattr(info, field):,} where {shape.name} has {want:,}"
        for field, want in wanted.items()
        if want is not None and getattr(info, field) != want
    ]


@transaction.atomic
def checkpoint_register_weights(
    *,
    actor: User | None,
    checkpoint: Checkpoint,
    folder: Path,
    info: WeightsInfo,
    is_demo: bool,
    shape_mismatch_allowed: bool = False,
) -> Checkpoint:
    """Record the weights a checkpoint is served from. `actor` is None for set-up commands."""
    if actor is not None:
        require_role(actor, Role.LAB_ADMIN)
    checkpoint = Checkpoint.objects.select_for_update().get(pk=checkpoint.pk)
    previous = checkpoint.weights_sha256
    checkpoint.weights_path = str(Path(folder).resolve())
    checkpoint.weights_sha256 = info.sha256
    checkpoint.weights_parameter_count = info.parameter_count
    checkpoint.weights_context = info.n_positions
    checkpoint.is_demo = is_demo
    checkpoint.weights_registered_at = timezone.now()
    checkpoint.save(
        update_fields=[
            "weights_path",
            "weights_sha256",
            "weights_parameter_count",
            "weights_context",
            "is_demo",
            "weights_registered_at",
        ]
    )
    audit_append(
        actor=actor,
        action=events.CHECKPOINT_WEIGHTS_REGISTERED,
        target=checkpoint,
        data={
            "path": checkpoint.weights_path,
            "sha256": info.sha256,
            "previous_sha256": previous or None,
            "parameter_count": info.parameter_count,
            "shape": {"n_layer": info.n_layer, "n_embd": info.n_embd, "n_head": info.n_head},
            "is_demo": is_demo,
            "shape_mismatch_allowed": shape_mismatch_allowed,
        },
    )
    return checkpoint


def checkpoint_import(
    *, actor: User | None, checkpoint: Checkpoint, folder: Path, allow_shape_mismatch: bool = False
) -> Checkpoint:
    """Check a Hugging Face-format folder and register it as the checkpoint's weights.

    The folder must hold a GPT-2 config, safetensors weights (pickles are refused) and a tokenizer.
    Its shape must be the released model's, or the stage's demo shape (then it is marked demo),
    unless the mismatch is allowed explicitly.
    """
    if actor is not None:
        require_role(actor, Role.LAB_ADMIN)
    folder = Path(folder).resolve()
    try:
        info = inspect_checkpoint(folder)
    except WeightsError as exc:
        raise ValidationError(str(exc)) from None
    differences = shape_differences(info, released_shape(checkpoint))
    demo = checkpoint.slug in DEMO_SHAPES and not shape_differences(info, DEMO_SHAPES[checkpoint.slug])
    if differences and not demo and not allow_shape_mismatch:
        raise ValidationError(f"Wrong shape for {checkpoint.slug}: the folder has {'; '.join(differences)}.")
    return checkpoint_register_weights(
        actor=actor,
        checkpoint=checkpoint,
        folder=folder,
        info=info,
        is_demo=bool(differences) and demo,
        shape_mismatch_allowed=bool(differences) and not demo,
    )


def checkpoints_ensure_demo(*, root: Path, corpus: str, train: bool = False) -> list[tuple[Checkpoint, str]]:
    """Build (if needed) and register the tiny demo checkpoints under root/<slug>/.

    With `train`, each is trained DEMO_TRAIN_STEPS steps on the English corpus (its tokenizer on
    `corpus`, which should be that corpus's training part); without, the weights stay random.
    Idempotent: a folder whose weights still hash to what is registered, trained as asked, is left
    alone, and a slug with real weights registered is never touched. Returns each checkpoint with
    what happened.
    """
    from models_registry.weights import build_demo_checkpoint, file_sha256, read_training_report

    results = []
    for checkpoint in Checkpoint.objects.filter(slug__in=list(DEMO_SHAPES)).order_by("parameter_count"):
        folder = (Path(root) / checkpoint.slug).resolve()
        if checkpoint.has_weights and not checkpoint.is_demo:
            results.append((checkpoint, "real weights registered; left alone"))
            continue
        weights = folder / "model.safetensors"
        steps = DEMO_TRAIN_STEPS[checkpoint.slug] if train else 0
        report = read_training_report(folder)
        if (
            checkpoint.has_weights
            and checkpoint.weights_path == str(folder)
            and weights.is_file()
            # Random weights from before training was asked for (or the reverse) are rebuilt.
            and (report or {}).get("steps", 0) == steps
            and file_sha256(weights) == checkpoint.weights_sha256
        ):
            results.append((checkpoint, "up to date"))
            continue
        shape = DEMO_SHAPES[checkpoint.slug]
        _quiet_transformers()
        info = build_demo_checkpoint(
            folder,
            n_layer=shape.n_layer,
            n_embd=shape.n_embd,
            n_head=shape.n_head,
            seed=DEMO_SEEDS[checkpoint.slug],
            corpus=corpus,
            train_steps=steps,
        )
        checkpoint = checkpoint_register_weights(
            actor=None, checkpoint=checkpoint, folder=folder, info=info, is_demo=True
        )
        results.append((checkpoint, "built"))
    return results


def _quiet_transformers() -> None:
    # Saving draws a progress bar per file; in seed_demo's output it is only noise.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated in transformers


# --- Checkpoint status: embargo, restore, withdraw (the kill switch) ---------------------------------


@transaction.atomic
def checkpoint_embargo(*, actor: User, checkpoint: Checkpoint, reason: str = "") -> Checkpoint:
    """Pause all use of a checkpoint; grants stay, so restoring brings access back."""
    require_role(actor, Role.LAB_ADMIN)
    reason = clean_reason(reason, required=False, what="partners see it")
    checkpoint = Checkpoint.objects.select_for_update().get(pk=checkpoint.pk)
    if checkpoint.status != Checkpoint.Status.AVAILABLE:
        status = checkpoint.get_status_display().lower()
        raise ValidationError(f"{checkpoint.slug} is {status}; it cannot be embargoed.")
    checkpoint.status = Checkpoint.Status.EMBARGOED
    checkpoint.status_reason = reason
    checkpoint.save(update_fields=["status", "status_reason"])
    event = audit_append(actor=actor, action=events.CHECKPOINT_EMBARGOED, target=checkpoint, data={"reason": reason})
    # The registry cannot see who holds grants; agreements can, and tells them (by task name: it stands above).
    task_send_on_commit("agreements.tasks.notify_checkpoint_embargoed", checkpoint.pk, event.seq)
    return checkpoint


@transaction.atomic
def checkpoint_restore(*, actor: User, checkpoint: Checkpoint) -> Checkpoint:
    """Make an embargoed or withdrawn checkpoint available again.

    Grants revoked by a withdrawal stay revoked: access comes back only through a new agreement.
    """
    require_role(actor, Role.LAB_ADMIN)
    checkpoint = Checkpoint.objects.select_for_update().get(pk=checkpoint.pk)
    if checkpoint.status == Checkpoint.Status.AVAILABLE:
        raise ValidationError(f"{checkpoint.slug} is already available.")
    previous = checkpoint.status
    checkpoint.status = Checkpoint.Status.AVAILABLE
    checkpoint.status_reason = ""
    checkpoint.save(update_fields=["status", "status_reason"])
    audit_append(actor=actor, action=events.CHECKPOINT_RESTORED, target=checkpoint, data={"from": previous})
    return checkpoint


@transaction.atomic
def checkpoint_mark_withdrawn(*, actor: User, checkpoint: Checkpoint, reason: str) -> tuple[Checkpoint, str]:
    """Set a checkpoint's status to withdrawn; returns it and the status it had.

    Only the registry's part of the kill switch: inference.services.checkpoint_withdraw also revokes
    the grants and cancels the jobs, in the same transaction, and writes the audit event.
    """
    require_role(actor, Role.LAB_ADMIN)
    reason = clean_reason(reason, required=True, what="partners and auditors see it")
    checkpoint = Checkpoint.objects.select_for_update().get(pk=checkpoint.pk)
    if checkpoint.status == Checkpoint.Status.WITHDRAWN:
        raise ValidationError(f"{checkpoint.slug} is already withdrawn.")
    previous = checkpoint.status
    checkpoint.status = Checkpoint.Status.WITHDRAWN
    checkpoint.status_reason = reason
    checkpoint.save(update_fields=["status", "status_reason"])
    return checkpoint, previous


@transaction.atomic
def checkpoint_release_publicly(*, actor: User, checkpoint: Checkpoint) -> Checkpoint:
    """Mark an available checkpoint released to the public (the registry's part of a public release).

    Only the flag and its audit event: research.services.releases.release_decide calls this within the
    decision's transaction, and agreements then grants the checkpoint to every active agreement.
    """
    require_role(actor, Role.LAB_ADMIN)
    checkpoint = Checkpoint.objects.select_for_update().get(pk=checkpoint.pk)
    if checkpoint.public_since is not None:
        raise ValidationError(f"{checkpoint.slug} has been public since {checkpoint.public_since:%Y-%m-%d}.")
    if checkpoint.status != Checkpoint.Status.AVAILABLE:
        status = checkpoint.get_status_display().lower()
        raise ValidationError(f"{checkpoint.slug} is {status}; restore it before releasing it to the public.")
    checkpoint.public_since = timezone.now()
    checkpoint.save(update_fields=["public_since"])
    audit_append(
        actor=actor,
        action=events.CHECKPOINT_RELEASED_PUBLICLY,
        target=checkpoint,
        data={"public_since": checkpoint.public_since.isoformat()},
    )
    return checkpoint
