"""Navigation by role: each persona sees only the places it can use."""

from __future__ import annotations

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

from accounts.models import LAB_ROLES, Role
from accounts.permissions import role_of

# (label, url name, roles that see it). Later features add their entries here.
NAV_ITEMS: list[tuple[str, str, tuple[str, ...]]] = [
    ("Home", "home", tuple(Role.values)),
    ("Organisations", "organization_list", LAB_ROLES),
    ("My organisation", "my_organization", (Role.PARTNER_ADMIN, Role.SIGNATORY, Role.RESEARCHER)),
    ("Templates", "template_list", (Role.LAB_ADMIN, Role.LEGAL)),
    ("Agreements", "agreement_list", tuple(Role.values)),
    ("Checkpoints", "checkpoint_list", tuple(Role.values)),
    ("Jobs", "job_list", tuple(Role.values)),
    ("Access requests", "access_request_list", tuple(Role.values)),
    ("Obligations", "obligation_list", tuple(Role.values)),
    ("Findings", "finding_list", tuple(Role.values)),
    ("Incidents", "incident_list", tuple(Role.values)),
    ("Stage reviews", "stage_review_index", LAB_ROLES),
    ("Audit log", "audit_event_list", LAB_ROLES),
    ("Records", "records_home", LAB_ROLES),
    ("Verify a record", "record_verify", tuple(Role.values)),
    ("Provenance", "provenance_check", tuple(Role.values)),
    ("API tokens", "api_token_list", tuple(Role.values)),
    ("Webhooks", "webhook_list", (Role.LAB_ADMIN, Role.PARTNER_ADMIN)),
]


def navigation(request: HttpRequest) -> dict[str, object]:
    role = role_of(getattr(request, "user", None))
    if role is None:
        return {"nav_items": [], "current_role": None}
    items = []
    for label, name, roles in NAV_ITEMS:
        if role not in roles:
            continue
        try:
            url = reverse(name)
        except NoReverseMatch:
            continue
        active = request.path == url if name == "home" else request.path.startswith(url)
        items.append({"label": label, "url": url, "active": active})
    return {"nav_items": items, "current_role": Role(role)}
