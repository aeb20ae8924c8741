"""Writes to the registry: grants that follow agreements. Each is atomic and audited."""

from __future__ import annotations

from datetime import UTC, datetime, time

from django.db import transaction
from django.utils import timezone

from audit import events
from audit.services import audit_record
from models_registry.models import AccessGrant


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
