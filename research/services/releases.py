"""Release decisions: the lab admin's decision on a checkpoint's next stage, and its effects.

One decision is one transaction: the checkpoint row is locked, the evidence is read and hashed, the
decision row written, its effects made through the services that own them (the registry's status, the
amendments agreements drafts, the grants of a public release), one RELEASE_DECIDED event appended, the
people concerned told, and the sealed record queued once it is all committed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from accounts.models import LAB_ROLES, PARTNER_ROLES, NotificationKind, Organization, User
from accounts.permissions import require_role
from accounts.services import notifications_send
from agreements.models import Agreement
from agreements.services import agreement_amend, grants_create_for_public_release
from audit import events
from audit.services import audit_append
from core.errors import DomainError
from core.tasks import task_send_on_commit
from core.validators import strip_invisible, visible_length
from models_registry.models import Checkpoint
from models_registry.services import checkpoint_embargo, checkpoint_release_publicly, checkpoint_restore
from research.models import ReleaseDecision
from research.selectors.releases import (
    RELEASE_DECIDERS,
    PartnerEvidence,
    evidence_sha256,
    release_decision_latest,
    stage_review,
    stage_review_summary,
)

RATIONALE_MIN_CHARS = 20
RATIONALE_MAX_CHARS = 5000
Decision = ReleaseDecision.Decision
_RELEASES = (Decision.RELEASE_TO_PARTNERS, Decision.RELEASE_TO_ALL_PARTNERS, Decision.PUBLIC_RELEASE)
# Agreements that may still become active: one of them already offering the checkpoint is not drafted again.
_PENDING = (Agreement.Status.DRAFT, Agreement.Status.OUT_FOR_SIGNATURE, Agreement.Status.PARTNER_SIGNED)


class DecisionConflict(DomainError):
    """Someone recorded a decision on the checkpoint after the decider last saw it: nothing was written."""

    status = 409
    code = "decision_conflict"


def clean_rationale(rationale: object) -> str:
    """The rationale as stored: at least a sentence (20 visible characters), at most 5,000."""
    text = strip_invisible(rationale) if isinstance(rationale, str) else ""
    if any(unicodedata.category(c) == "Cc" and c not in "\n\r\t" for c in text):
        raise ValidationError(
            {"rationale": "The rationale contains control characters; remove them and send it again."}
        )
    if visible_length(text) < RATIONALE_MIN_CHARS:
        raise ValidationError(
            {
                "rationale": (
                    f"Give the rationale for this decision in at least a sentence ({RATIONALE_MIN_CHARS} characters "
                    "or more); legal, auditors and the sealed record read it."
                )
            }
        )
    if len(text) > RATIONALE_MAX_CHARS:
        raise ValidationError({"rationale": f"Keep the rationale to {RATIONALE_MAX_CHARS:,} characters."})
    return text


@dataclass
class _Effects:
    """What a decision did, for the audit event, the notices and the page's message."""

    status_before: str
    status_after: str = ""
    amendments: list[Agreement] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)  # organisation id -> why no amendment
    public_grants: int = 0
    granted_organizations: list[Organization] = field(default_factory=list)


@transaction.atomic
def release_decide(
    *,
    actor: User,
    checkpoint: Checkpoint,
    decision: str,
    rationale: str,
    partners: Sequence[Organization] = (),
    after: ReleaseDecision | None,
) -> ReleaseDecision:
    """Record the lab admin's decision on `checkpoint`'s next stage and make it take effect.

    `after` is the decision in force when the decider read the evidence (None for the first): when
    another was recorded since, DecisionConflict (409) and nothing is written.
    """
    require_role(actor, *RELEASE_DECIDERS)
    rationale = clean_rationale(rationale)
    if decision not in Decision.values:
        choices = ", ".join(Decision.values)
        raise ValidationError({"decision": f"Choose one of the decisions: {choices}."})
    partners = list(dict.fromkeys(partners))
    if partners and decision != Decision.RELEASE_TO_PARTNERS:
        raise ValidationError({"partners": "Name partners only when releasing to named partners."})

    # The lock serialises decisions on one checkpoint: the second of two waits here, then sees the first.
    checkpoint = Checkpoint.objects.select_for_update().get(pk=checkpoint.pk)
    latest = release_decision_latest(checkpoint=checkpoint)
    if (latest.pk if latest else None) != (after.pk if after else None):
        raise DecisionConflict(_conflict_message(checkpoint, latest), details={"latest": _describe(latest)})
    if decision in _RELEASES and checkpoint.status == Checkpoint.Status.WITHDRAWN:
        raise ValidationError(
            {
                "decision": (
                    f"{checkpoint.slug} is withdrawn; only “keep embargoed” can be decided until it is restored "
                    "on its registry page."
                )
            }
        )
    if decision == Decision.PUBLIC_RELEASE and checkpoint.public_since is not None:
        raise ValidationError(
            {"decision": f"{checkpoint.slug} has been public since {checkpoint.public_since:%Y-%m-%d}."}
        )

    now = timezone.now()
    review = stage_review(user=actor, checkpoint=checkpoint, now=now)
    evidence = stage_review_summary(review)
    chosen = _chosen_partners(decision, partners, review.partners)

    release = ReleaseDecision.objects.create(
        checkpoint=checkpoint,
        decision=decision,
        rationale=rationale,
        evidence=evidence,
        evidence_sha256=evidence_sha256(evidence),
        decided_by=actor,
        decided_at=now,
        supersedes=latest,
    )
    effects = _take_effect(actor=actor, release=release, checkpoint=checkpoint, chosen=chosen)
    release.partners.set(chosen)
    release.amendments.set(effects.amendments)

    names = {o.pk: o.name for o in chosen}
    audit_append(
        actor=actor,
        action=events.RELEASE_DECIDED,
        target=release,
        organization=None,  # a lab-wide decision, whichever partners it names
        data={
            "reference": release.reference,
            "checkpoint": checkpoint.slug,
            "decision": decision,
            "supersedes": latest.reference if latest else None,
            "partners": [o.name for o in chosen],
            "amendments": {a.reference: a.organization.name for a in effects.amendments},
            "skipped": {names.get(pk, str(pk)): why for pk, why in effects.skipped.items()},
            "public_grants": effects.public_grants,
            "checkpoint_status": {"before": effects.status_before, "after": effects.status_after},
            "evidence_sha256": release.evidence_sha256,
        },
    )
    _notify(release, checkpoint, chosen, effects)
    task_send_on_commit("records.tasks.seal_stage_review", release.pk)
    return release


def _chosen_partners(decision: str, named: list[Organization], evidence: list[PartnerEvidence]) -> list[Organization]:
    """The partners a release goes to, checked against good standing as the evidence read it."""
    by_id = {p.organization.pk: p for p in evidence}
    if decision == Decision.RELEASE_TO_ALL_PARTNERS:
        chosen = [p.organization for p in evidence if p.good_standing]
        if not chosen:
            raise ValidationError(
                {"decision": "No partner is in good standing with an active agreement: there is nobody to release to."}
            )
        return chosen
    if decision != Decision.RELEASE_TO_PARTNERS:
        return []
    if not named:
        raise ValidationError({"partners": "Choose the partners in good standing to release to."})
    refused = []
    for organization in named:
        row = by_id.get(organization.pk)
        if organization.kind != Organization.Kind.PARTNER:
            refused.append(f"{organization.name} (not a partner organisation)")
        elif row is None:
            refused.append(f"{organization.name} ({'deactivated' if not organization.active else 'unknown'})")
        elif not row.good_standing:
            refused.append(f"{organization.name} ({row.standing_note})")
    if refused:
        raise ValidationError(
            {"partners": "Only partners in good standing can be released to; not: " + "; ".join(refused) + "."}
        )
    return sorted(named, key=lambda o: o.name.lower())


def _take_effect(
    *, actor: User, release: ReleaseDecision, checkpoint: Checkpoint, chosen: list[Organization]
) -> _Effects:
    """Make the decision true, each change through the service that owns it (each audits its own)."""
    effects = _Effects(status_before=checkpoint.status)
    if release.decision == Decision.KEEP_EMBARGOED:
        # Withdrawn is stricter than embargoed (its grants are revoked): it stays as it is.
        if checkpoint.status == Checkpoint.Status.AVAILABLE:
            checkpoint = checkpoint_embargo(
                actor=actor, checkpoint=checkpoint, reason=f"kept embargoed by release decision {release.reference}"
            )
        effects.status_after = checkpoint.status
        return effects

    if checkpoint.status == Checkpoint.Status.EMBARGOED:
        checkpoint = checkpoint_restore(actor=actor, checkpoint=checkpoint)
    if release.decision == Decision.PUBLIC_RELEASE:
        checkpoint = checkpoint_release_publicly(actor=actor, checkpoint=checkpoint)
        grants = grants_create_for_public_release(checkpoint=checkpoint, actor=actor)
        effects.public_grants = len(grants)
        effects.granted_organizations = list({g.organization_id: g.organization for g in grants}.values())
    else:
        _draft_amendments(actor=actor, checkpoint=checkpoint, chosen=chosen, effects=effects)
    effects.status_after = checkpoint.status
    return effects


def _draft_amendments(*, actor: User, checkpoint: Checkpoint, chosen: list[Organization], effects: _Effects) -> None:
    """Draft the staged-release amendment for each chosen partner; legal sends it and the partner signs as usual."""
    ids = [o.pk for o in chosen]
    now = timezone.now()
    live = {
        g.organization_id: g.agreement.reference
        for g in checkpoint.grants.filter(
            organization_id__in=ids,
            revoked_at=None,
            starts_at__lte=now,
            ends_at__gt=now,
            agreement__status=Agreement.Status.ACTIVE,
        ).select_related("agreement")
    }
    pending = {
        a.organization_id: a.reference
        for a in Agreement.objects.filter(organization_id__in=ids, status__in=_PENDING, checkpoints=checkpoint)
    }
    active: dict[int, Agreement] = {}
    for agreement in Agreement.objects.filter(organization_id__in=ids, status=Agreement.Status.ACTIVE).order_by(
        "activated_at", "pk"
    ):
        active[agreement.organization_id] = agreement  # the most recently activated wins
    for organization in chosen:
        if organization.pk in live:
            effects.skipped[organization.pk] = f"already holds a live grant under {live[organization.pk]}"
        elif organization.pk in pending:
            effects.skipped[organization.pk] = f"{pending[organization.pk]}, not yet active, already grants it"
        elif organization.pk not in active:  # good standing needs one; the evidence said so a moment ago
            raise ValidationError({"partners": f"{organization.name} has no active agreement to amend."})
        else:
            effects.amendments.append(
                agreement_amend(actor=actor, agreement=active[organization.pk], extra_checkpoints=[checkpoint])
            )


def _describe(decision: ReleaseDecision | None) -> dict[str, object] | None:
    if decision is None:
        return None
    return {
        "id": decision.pk,
        "reference": decision.reference,
        "decision": decision.decision,
        "decided_at": decision.decided_at.isoformat(),
        "decided_by": decision.decided_by.email,
    }


def _conflict_message(checkpoint: Checkpoint, latest: ReleaseDecision | None) -> str:
    if latest is None:
        return (
            f"The decision you read the evidence under is no longer the latest on {checkpoint.slug}. Nothing was "
            "recorded: reload the stage review and decide again."
        )
    by = latest.decided_by.get_full_name() or latest.decided_by.email
    return (
        f"{latest.reference} ({latest.get_decision_display().lower()}) was recorded on {checkpoint.slug} by {by} at "
        f"{latest.decided_at:%Y-%m-%d %H:%M} UTC, after you opened this review. Nothing was recorded: read the new "
        "decision and the evidence, then decide again."
    )


def _notify(release: ReleaseDecision, checkpoint: Checkpoint, chosen: list[Organization], effects: _Effects) -> None:
    """Lab staff hear the whole decision; each partner it concerns hears only its own part."""
    label = release.get_decision_display()
    amended = {a.organization_id: a for a in effects.amendments}
    lines = [f"{release.reference}: {label.lower()} for {checkpoint.label}.", f"Rationale: {release.rationale}"]
    if chosen:
        lines.append("Partners: " + ", ".join(o.name for o in chosen) + ".")
    if effects.amendments:
        lines.append(
            "Amendments drafted for legal to send: "
            + ", ".join(f"{a.reference} ({a.organization.name})" for a in effects.amendments)
            + "."
        )
    names = {o.pk: o.name for o in chosen}
    lines += [f"{names.get(pk, pk)}: {why}." for pk, why in effects.skipped.items()]
    if effects.public_grants:
        lines.append(f"{effects.public_grants} grants made for every active agreement.")
    notifications_send(
        users=User.objects.filter(is_active=True, membership__role__in=LAB_ROLES),
        kind=NotificationKind.RELEASE_DECIDED,
        title=f"{checkpoint.slug}: {label.lower()} ({release.reference})",
        body="\n".join(lines),
        url=reverse("stage_review", args=[checkpoint.slug]),
        dedupe_key=f"release.decided:{release.pk}:lab",
    )

    told = {o.pk: o for o in [*chosen, *effects.granted_organizations]}
    for organization in told.values():
        if release.decision == Decision.PUBLIC_RELEASE:
            body = (
                f"The lab released {checkpoint.label} to the public. Your organisation's active agreement now "
                "grants it for the rest of its term, at its daily quota."
            )
        elif organization.pk in amended:
            body = (
                f"The lab decided to release {checkpoint.label} to {organization.name}. Legal will send amendment "
                f"{amended[organization.pk].reference} for your signatories to sign; access starts once the lab "
                "countersigns it."
            )
        else:
            body = (
                f"The lab decided to release {checkpoint.label} to {organization.name}; "
                f"{effects.skipped.get(organization.pk, 'nothing changes for now')}."
            )
        notifications_send(
            users=User.objects.filter(
                is_active=True, membership__organization=organization, membership__role__in=PARTNER_ROLES
            ),
            kind=NotificationKind.RELEASE_DECIDED,
            title=f"{checkpoint.slug} is released to your organisation",
            body=body,
            url=reverse("checkpoint_list"),
            dedupe_key=f"release.decided:{release.pk}:org:{organization.pk}",
        )
