"""Writes to the registry: weights, checkpoint status, access requests, and grants that follow agreements.

Each write is atomic and audited.
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from pathlib import Path

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import PARTNER_ROLES, Organization, Role, User
from accounts.permissions import require_role
from audit import events
from audit.models import AuditEvent
from audit.services import audit_record
from core.validators import clean_purpose
from inference.models import GenerationJob
from models_registry.models import AccessGrant, AccessRequest, Checkpoint
from models_registry.selectors import REQUEST_REVIEWERS, AccessDecision
from models_registry.weights import DEMO_SHAPES, GPT2Shape, WeightsError, WeightsInfo, inspect_checkpoint


@transaction.atomic
def grants_create_for_agreement(*, agreement, actor) -> list[AccessGrant]:
    """An agreement became active: grant its organisation each checkpoint for its term and quota."""
    starts = datetime.combine(agreement.effective_date, time.min, tzinfo=UTC)
    ends = datetime.combine(agreement.end_date, time.min, tzinfo=UTC)
    grants = []
    for checkpoint in agreement.checkpoints.order_by("parameter_count"):
        grant = AccessGrant.objects.create(
            organization=agreement.organization,
            checkpoint=checkpoint,
            agreement=agreement,
            starts_at=starts,
            ends_at=ends,
            daily_token_quota=agreement.daily_token_quota,
        )
        audit_record(
            actor=actor,
            action=events.GRANT_CREATED,
            target=grant,
            organization=agreement.organization,
            data={
                "agreement": agreement.reference,
                "checkpoint": checkpoint.slug,
                "starts_at": starts.isoformat(),
                "ends_at": ends.isoformat(),
                "daily_token_quota": agreement.daily_token_quota,
            },
        )
        grants.append(grant)
    return grants


@transaction.atomic
def grants_revoke_for_agreement(*, agreement, actor, reason: str) -> int:
    """Revoke every live grant an agreement created, with the reason partners and auditors see."""
    now = timezone.now()
    count = 0
    for grant in AccessGrant.objects.select_for_update().filter(agreement=agreement, revoked_at=None):
        grant.revoked_at = now
        grant.revoke_reason = reason
        grant.save(update_fields=["revoked_at", "revoke_reason"])
        audit_record(
            actor=actor,
            action=events.GRANT_REVOKED,
            target=grant,
            organization=grant.organization,
            data={"agreement": agreement.reference, "checkpoint": grant.checkpoint.slug, "reason": reason},
        )
        count += 1
    return count


@transaction.atomic
def grants_revoke_expired(*, now: datetime | None = None) -> int:
    """Revoke grants past their end (beat, hourly). access_check already refuses them; this records it."""
    now = now or timezone.now()
    count = 0
    due = AccessGrant.objects.select_for_update().filter(revoked_at=None, ends_at__lte=now)
    for grant in due.select_related("agreement", "checkpoint", "organization"):
        grant.revoked_at = now
        grant.revoke_reason = "expired"
        grant.save(update_fields=["revoked_at", "revoke_reason"])
        audit_record(
            actor=None,
            action=events.GRANT_REVOKED,
            target=grant,
            organization=grant.organization,
            data={
                "agreement": grant.agreement.reference,
                "checkpoint": grant.checkpoint.slug,
                "reason": "expired",
                "ends_at": grant.ends_at.isoformat(),
            },
        )
        count += 1
    return count


# --- Refusals at the choke point -------------------------------------------------------------------


@transaction.atomic
def access_refusal_record(
    *, actor: User | None, organization: Organization, checkpoint: Checkpoint, decision: AccessDecision
) -> AuditEvent:
    """Audit a refusal from selectors.access_check; every caller that acts on one must call this.

    Call it outside any transaction the caller is about to roll back, or the record goes with it.
    """
    return audit_record(
        actor=actor,
        action=events.ACCESS_REFUSED,
        target=checkpoint,
        organization=organization,
        data={
            "checkpoint": checkpoint.slug,
            "code": decision.code,
            "message": decision.message,
            "grant": decision.grant.pk if decision.grant else None,
            "quota_left": decision.quota_left,
        },
    )


# --- Weights ---------------------------------------------------------------------------------------

# Fixed seeds: a rebuilt demo checkpoint has the same bytes, so its registered SHA-256 stays valid.
DEMO_SEEDS = {slug: 2019 + index for index, slug in enumerate(DEMO_SHAPES)}


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
    audit_record(
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


def checkpoints_ensure_demo(*, root: Path, corpus: str) -> list[tuple[Checkpoint, str]]:
    """Build (if needed) and register the tiny demo checkpoints under root/<slug>/.

    Idempotent: a folder whose weights still hash to what is registered is left alone, and a slug
    with real weights registered is never touched. Returns each checkpoint with what happened.
    """
    from models_registry.weights import build_demo_checkpoint, file_sha256

    results = []
    for checkpoint in Checkpoint.objects.filter(slug__in=list(DEMO_SHAPES)).order_by("parameter_count"):
        folder = (Path(root) / checkpoint.slug).resolve()
        if checkpoint.has_weights and not checkpoint.is_demo:
            results.append((checkpoint, "real weights registered; left alone"))
            continue
        weights = folder / "model.safetensors"
        if (
            checkpoint.has_weights
            and checkpoint.weights_path == str(folder)
            and weights.is_file()
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
        )
        checkpoint = checkpoint_register_weights(
            actor=None, checkpoint=checkpoint, folder=folder, info=info, is_demo=True
        )
        results.append((checkpoint, "built"))
    return results


def _quiet_transformers() -> None:
    # Saving draws a progress bar per file; in seed_demo's output it is only noise.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


# --- Checkpoint status: embargo, restore, withdraw (the kill switch) ---------------------------------


def _clean_reason(reason: str, *, required: bool, what: str) -> str:
    reason = (reason or "").strip()
    if required and len(reason) < 5:
        raise ValidationError({"reason": f"Give a reason (at least a few words); {what}."})
    if len(reason) > 2000:
        raise ValidationError({"reason": "Keep the reason under 2,000 characters."})
    return reason


@transaction.atomic
def checkpoint_embargo(*, actor: User, checkpoint: Checkpoint, reason: str = "") -> Checkpoint:
    """Pause all use of a checkpoint; grants stay, so restoring brings access back."""
    require_role(actor, Role.LAB_ADMIN)
    reason = _clean_reason(reason, required=False, what="partners see it")
    checkpoint = Checkpoint.objects.select_for_update().get(pk=checkpoint.pk)
    if checkpoint.status != Checkpoint.Status.AVAILABLE:
        status = checkpoint.get_status_display().lower()
        raise ValidationError(f"{checkpoint.slug} is {status}; it cannot be embargoed.")
    checkpoint.status = Checkpoint.Status.EMBARGOED
    checkpoint.status_reason = reason
    checkpoint.save(update_fields=["status", "status_reason"])
    audit_record(actor=actor, action=events.CHECKPOINT_EMBARGOED, target=checkpoint, data={"reason": reason})
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
    audit_record(actor=actor, action=events.CHECKPOINT_RESTORED, target=checkpoint, data={"from": previous})
    return checkpoint


@transaction.atomic
def checkpoint_withdraw(*, actor: User, checkpoint: Checkpoint, reason: str) -> Checkpoint:
    """The kill switch: withdraw a checkpoint, revoke every grant of it and cancel its queued jobs.

    Running jobs are asked to stop (the worker checks between decoding steps); the worker's own
    access check refuses anything that slips past.
    """
    require_role(actor, Role.LAB_ADMIN)
    reason = _clean_reason(reason, required=True, what="partners and auditors see it")
    checkpoint = Checkpoint.objects.select_for_update().get(pk=checkpoint.pk)
    if checkpoint.status == Checkpoint.Status.WITHDRAWN:
        raise ValidationError(f"{checkpoint.slug} is already withdrawn.")
    now = timezone.now()
    previous = checkpoint.status
    checkpoint.status = Checkpoint.Status.WITHDRAWN
    checkpoint.status_reason = reason
    checkpoint.save(update_fields=["status", "status_reason"])

    revoke_reason = f"checkpoint {checkpoint.slug} withdrawn: {reason}"
    revoked = []
    grants = AccessGrant.objects.select_for_update().filter(checkpoint=checkpoint, revoked_at=None)
    for grant in grants.select_related("agreement", "organization"):
        grant.revoked_at = now
        grant.revoke_reason = revoke_reason
        grant.save(update_fields=["revoked_at", "revoke_reason"])
        audit_record(
            actor=actor,
            action=events.GRANT_REVOKED,
            target=grant,
            organization=grant.organization,
            data={"agreement": grant.agreement.reference, "checkpoint": checkpoint.slug, "reason": revoke_reason},
        )
        revoked.append(grant.pk)

    # Conditional updates: a job a worker claimed a moment ago is running, not queued, and is
    # asked to stop instead.
    queued = GenerationJob.objects.filter(checkpoint=checkpoint, status=GenerationJob.Status.QUEUED)
    cancelled = list(queued.values_list("pk", flat=True))
    GenerationJob.objects.filter(pk__in=cancelled, status=GenerationJob.Status.QUEUED).update(
        status=GenerationJob.Status.CANCELLED,
        error_code="checkpoint_withdrawn",
        error_message=f"Checkpoint {checkpoint.slug} was withdrawn: {reason}",
        finished_at=now,
        lease_expires_at=None,
    )
    stopping = GenerationJob.objects.filter(
        checkpoint=checkpoint, status=GenerationJob.Status.RUNNING, cancel_requested_at=None
    ).update(cancel_requested_at=now)

    audit_record(
        actor=actor,
        action=events.CHECKPOINT_WITHDRAWN,
        target=checkpoint,
        data={
            "reason": reason,
            "from": previous,
            "grants_revoked": revoked,
            "jobs_cancelled": cancelled,
            "running_jobs_asked_to_stop": stopping,
        },
    )
    return checkpoint


# --- Access requests -----------------------------------------------------------------------------


@transaction.atomic
def access_request_create(*, actor: User, checkpoints: list[Checkpoint], purpose: str) -> AccessRequest:
    """A partner user asks for access to one or more checkpoints, for a stated purpose.

    A checkpoint is pending at most once per organisation: the organisation's row is locked while
    its pending requests are checked, so of two requests sent at once the second waits for the
    first, then sees it and is refused with its number.
    """
    require_role(actor, *PARTNER_ROLES)
    organization = Organization.objects.select_for_update().get(pk=actor.membership.organization_id)
    errors: dict[str, list[str]] = {}
    try:
        purpose = clean_purpose(purpose)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    checkpoints = sorted(set(checkpoints), key=lambda c: c.parameter_count)
    if not checkpoints:
        errors["checkpoints"] = ["Choose at least one checkpoint."]
    else:
        problems = [
            f"{c.slug} is {c.get_status_display().lower()} and cannot be requested."
            for c in Checkpoint.objects.filter(pk__in=[c.pk for c in checkpoints]).order_by("parameter_count")
            if c.status != Checkpoint.Status.AVAILABLE
        ]
        pending = (
            AccessRequest.objects.filter(
                organization=organization, status=AccessRequest.Status.PENDING, checkpoints__in=checkpoints
            )
            .values_list("pk", "checkpoints__slug")
            .order_by("pk")
        )
        problems += [
            f"{slug} is already requested (request #{pk} is pending)."
            for pk, slug in pending
            if slug in {c.slug for c in checkpoints}
        ]
        if problems:
            errors["checkpoints"] = problems
    if not organization.active:
        errors.setdefault("__all__", []).append(f"{organization.name} is deactivated; it cannot request access.")
    if errors:
        raise ValidationError(errors)
    access_request = AccessRequest.objects.create(organization=organization, requester=actor, purpose=purpose)
    access_request.checkpoints.set(checkpoints)
    audit_record(
        actor=actor,
        action=events.ACCESS_REQUEST_CREATED,
        target=access_request,
        data={"checkpoints": [c.slug for c in checkpoints], "purpose": purpose},
    )
    return access_request


def _lock_pending(access_request: AccessRequest) -> AccessRequest:
    access_request = AccessRequest.objects.select_for_update().get(pk=access_request.pk)
    if access_request.status != AccessRequest.Status.PENDING:
        raise ValidationError(
            f"Access request #{access_request.pk} is already {access_request.get_status_display().lower()}."
        )
    return access_request


@transaction.atomic
def access_request_withdraw(*, actor: User, access_request: AccessRequest) -> AccessRequest:
    """The requesting organisation takes back a request still waiting for review."""
    require_role(actor, *PARTNER_ROLES)
    if actor.membership.organization_id != access_request.organization_id:
        raise PermissionDenied("Only the requesting organisation can withdraw its request.")
    access_request = _lock_pending(access_request)
    access_request.status = AccessRequest.Status.WITHDRAWN
    access_request.decided_at = timezone.now()
    access_request.decided_by = actor
    access_request.save(update_fields=["status", "decided_at", "decided_by"])
    audit_record(actor=actor, action=events.ACCESS_REQUEST_WITHDRAWN, target=access_request)
    return access_request


@transaction.atomic
def access_request_approve(*, actor: User, access_request: AccessRequest) -> AccessRequest:
    """Approve a request: it opens a prefilled draft amendment (or first agreement) for legal to finish.

    Approval grants nothing by itself; access follows once that agreement is signed and active.
    """
    from agreements.services import agreement_amend_for_request

    require_role(actor, *REQUEST_REVIEWERS)
    access_request = _lock_pending(access_request)
    unavailable = [
        c for c in access_request.checkpoints.order_by("parameter_count") if c.status != Checkpoint.Status.AVAILABLE
    ]
    if unavailable:
        names = ", ".join(f"{c.slug} is {c.get_status_display().lower()}" for c in unavailable)
        raise ValidationError(f"This request cannot be approved now: {names}. Reject it with that reason instead.")
    amendment = agreement_amend_for_request(actor=actor, access_request=access_request)
    access_request.status = AccessRequest.Status.APPROVED
    access_request.decided_at = timezone.now()
    access_request.decided_by = actor
    access_request.amendment = amendment
    access_request.save(update_fields=["status", "decided_at", "decided_by", "amendment"])
    audit_record(
        actor=actor,
        action=events.ACCESS_REQUEST_APPROVED,
        target=access_request,
        data={
            "checkpoints": [c.slug for c in access_request.checkpoints.order_by("parameter_count")],
            "agreement": amendment.reference,
        },
    )
    return access_request


@transaction.atomic
def access_request_reject(*, actor: User, access_request: AccessRequest, reason: str) -> AccessRequest:
    """Reject with a reason the partner sees; they may apply again."""
    require_role(actor, *REQUEST_REVIEWERS)
    reason = _clean_reason(reason, required=True, what="the partner sees it")
    access_request = _lock_pending(access_request)
    access_request.status = AccessRequest.Status.REJECTED
    access_request.decided_at = timezone.now()
    access_request.decided_by = actor
    access_request.decision_reason = reason
    access_request.save(update_fields=["status", "decided_at", "decided_by", "decision_reason"])
    audit_record(actor=actor, action=events.ACCESS_REQUEST_REJECTED, target=access_request, data={"reason": reason})
    return access_request
