"""Audit actions: dotted constants, one per kind of change. Add new ones here."""

ORGANIZATION_CREATED = "organization.created"
ORGANIZATION_UPDATED = "organization.updated"
INVITATION_SENT = "invitation.sent"
INVITATION_REVOKED = "invitation.revoked"
INVITATION_ACCEPTED = "invitation.accepted"
USER_CREATED = "user.created"
USER_ROLE_CHANGED = "user.role_changed"
USER_DEACTIVATED = "user.deactivated"
USER_REACTIVATED = "user.reactivated"
USER_PASSWORD_SET = "user.password_set"


def all_actions() -> list[str]:
    """Every action constant defined in this module, for filters and validation."""
    return sorted(value for name, value in globals().items() if name.isupper() and isinstance(value, str))
