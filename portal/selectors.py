"""What each persona's home page shows, gathered from the apps below."""

from __future__ import annotations

from accounts.models import LAB_ROLES, PARTNER_ROLES, Role, User
from accounts.permissions import role_of
from accounts.selectors import notification_home
from agreements.selectors import (
    REQUEST_REVIEWERS,
    access_request_review_queue,
    agreement_home,
    checkpoint_registry,
    obligation_home,
    partner_checkpoint_overview,
)
from inference.selectors import job_home
from research.selectors.findings import research_home
from research.selectors.releases import stage_review_index


def home_context(user: User) -> dict[str, object]:
    """Everything the role's home template reads."""
    context: dict[str, object] = {"organization": user.membership.organization}
    context.update(home_panels(user))
    context.update(notification_home(user=user))
    context.update(agreement_home(user=user))
    context.update(job_home(user=user))
    context.update(obligation_home(user=user))
    context.update(research_home(user=user))
    return context


def home_panels(user: User) -> dict[str, object]:
    """The registry and access-request panels of the persona home pages."""
    role = role_of(user)
    if role in PARTNER_ROLES:
        rows = partner_checkpoint_overview(user=user)
        return {
            "usable_checkpoints": [row for row in rows if row.usable],
            "requestable_checkpoints": [row for row in rows if row.requestable],
            "pending_checkpoints": [row for row in rows if row.pending_request and not row.usable],
        }
    panels: dict[str, object] = {}
    if role == Role.LAB_ADMIN:
        checkpoints = list(checkpoint_registry(user=user))
        # live_grants comes from a Prefetch(to_attr=...) in checkpoint_registry, which the stubs cannot see.
        for checkpoint in checkpoints:
            names = sorted({grant.organization.name for grant in checkpoint.live_grants})  # type: ignore[attr-defined]
            checkpoint.live_organizations = names  # type: ignore[attr-defined]
        panels["registry"] = checkpoints
    if role in LAB_ROLES:
        # Each stage with the release decision in force, or none yet: the decisions still to make.
        panels["stage_reviews"] = stage_review_index(user=user)
    if role in REQUEST_REVIEWERS:
        queue = access_request_review_queue(user=user)
        panels["pending_request_count"] = queue.count()
        panels["oldest_pending_request"] = queue.first()
    return panels
