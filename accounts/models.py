"""Organisations, their users and roles, and invitations."""

from __future__ import annotations

import hashlib
from typing import ClassVar

from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.db import models
from django.utils import timezone


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra: object) -> User:
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: object) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)


class User(AbstractUser):
    """A person who signs in with an email address; belongs to one organisation."""

    # Removing inherited fields by setting them to None is Django's documented way; the stubs type them str.
    username = None  # type: ignore[assignment]
    first_name = None  # type: ignore[assignment]
    last_name = None  # type: ignore[assignment]
    email = models.EmailField("email address", unique=True)
    full_name = models.CharField(max_length=200, blank=True)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    # The stubs declare AbstractUser.objects as Django's username-based UserManager.
    objects: ClassVar[UserManager] = UserManager()  # type: ignore[assignment]

    class Meta:
        ordering = ["email"]

    def __str__(self) -> str:
        return self.email

    def get_full_name(self) -> str:
        return self.full_name or self.email

    def get_short_name(self) -> str:
        return self.full_name.split(" ")[0] if self.full_name else self.email

    @property
    def organization(self) -> Organization | None:
        membership = getattr(self, "membership", None)
        return membership.organization if membership else None

    @property
    def role(self) -> str | None:
        membership = getattr(self, "membership", None)
        return membership.role if membership else None


class Organization(models.Model):
    class Kind(models.TextChoices):
        LAB = "lab", "Lab"
        PARTNER = "partner", "Partner"

    name = models.CharField(max_length=200, unique=True)
    legal_name = models.CharField(max_length=300)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.PARTNER)
    jurisdiction = models.CharField(max_length=200, blank=True)
    address = models.TextField(blank=True)
    contact_email = models.EmailField(blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["kind", "name"]
        constraints = [
            # There is one lab: the organisation that releases the checkpoints.
            models.UniqueConstraint(fields=["kind"], condition=models.Q(kind="lab"), name="one_lab"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_lab(self) -> bool:
        return self.kind == self.Kind.LAB


class Role(models.TextChoices):
    LAB_ADMIN = "lab_admin", "Lab admin"
    LEGAL = "legal", "Legal"
    AUDITOR = "auditor", "Auditor"
    PARTNER_ADMIN = "partner_admin", "Partner admin"
    SIGNATORY = "signatory", "Partner signatory"
    RESEARCHER = "researcher", "Partner researcher"

    @classmethod
    def for_kind(cls, kind: str) -> list[Role]:
        return list(LAB_ROLES if kind == Organization.Kind.LAB else PARTNER_ROLES)


LAB_ROLES = (Role.LAB_ADMIN, Role.LEGAL, Role.AUDITOR)
PARTNER_ROLES = (Role.PARTNER_ADMIN, Role.SIGNATORY, Role.RESEARCHER)


class Membership(models.Model):
    """Ties a user to exactly one organisation with one role."""

    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="membership")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="memberships")
    role = models.CharField(max_length=32, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["organization__name", "user__email"]
        constraints = [
            models.CheckConstraint(condition=models.Q(role__in=Role.values), name="membership_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.get_role_display()}, {self.organization})"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Invitation(models.Model):
    """An emailed link that lets a person create their account in an organisation.

    Only the SHA-256 of the token is stored, so a database leak gives no usable links.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=32, choices=Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["email"],
                condition=models.Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="one_open_invitation_per_email",
            ),
        ]

    def __str__(self) -> str:
        return f"Invitation for {self.email} to {self.organization}"

    @property
    def is_open(self) -> bool:
        return self.accepted_at is None and self.revoked_at is None

    @property
    def is_expired(self) -> bool:
        return timezone.now() >= self.expires_at

    @property
    def status(self) -> str:
        if self.accepted_at:
            return "accepted"
        if self.revoked_at:
            return "revoked"
        if self.is_expired:
            return "expired"
        return "pending"


# --- Notifications ----------------------------------------------------------------------------------
# The apps above raise these events; accounts only stores and delivers them, so it names them as strings.


class NotificationKind(models.TextChoices):
    AGREEMENT_TO_SIGN = "agreement_to_sign", "An agreement or amendment is ready for your signature"
    AGREEMENT_TO_COUNTERSIGN = "agreement_to_countersign", "A partner signed; the lab's countersignature is needed"
    AGREEMENT_ENDED = "agreement_ended", "An agreement was terminated or withdrawn"
    CHECKPOINT_WITHDRAWN = "checkpoint_withdrawn", "A checkpoint your organisation holds is withdrawn"
    AGREEMENT_ACTIVE = "agreement_active", "An agreement or amendment becomes active"
    AGREEMENT_DECLINED = "agreement_declined", "A partner declines an agreement"
    ACCESS_REQUEST_RECEIVED = "access_request_received", "A partner asks for access to checkpoints"
    ACCESS_REQUEST_DECIDED = "access_request_decided", "Your organisation's access request is approved or rejected"
    CHECKPOINT_EMBARGOED = "checkpoint_embargoed", "A checkpoint your organisation holds is embargoed"
    JOB_CANCELLED = "job_cancelled", "Your generation job is cancelled by someone else or by the lab"
    WEBHOOK_FAILING = "webhook_failing", "A webhook endpoint you manage is failing or was disabled"
    OBLIGATION_DUE = "obligation_due", "A report your organisation owes under its agreement is due soon"
    ACCESS_PAUSED = "access_paused", "An overdue obligation paused your organisation's access, or access resumed"
    FINDING_SUBMITTED = "finding_submitted", "A partner submits a finding or a paper for pre-publication review"
    FINDING_REVIEWED = "finding_reviewed", "The lab reviews one of your organisation's findings or papers"
    INCIDENT_REPORTED = "incident_reported", "Misuse or a security incident is reported"
    RELEASE_DECIDED = "release_decided", "The lab records a release decision on a checkpoint"


# Essential notices ask the person to act (sign, countersign) or tell them that access has ended; nobody
# can switch them off. Every other kind can be switched off on the notification settings page.
ESSENTIAL_KINDS = frozenset(
    {
        NotificationKind.AGREEMENT_TO_SIGN,
        NotificationKind.AGREEMENT_TO_COUNTERSIGN,
        NotificationKind.AGREEMENT_ENDED,
        NotificationKind.CHECKPOINT_WITHDRAWN,
        NotificationKind.WEBHOOK_FAILING,
        NotificationKind.ACCESS_PAUSED,
        NotificationKind.INCIDENT_REPORTED,
    }
)

# Who can receive each kind: the settings page offers a person only the kinds their role receives.
KIND_AUDIENCE: dict[str, tuple[str, ...]] = {
    NotificationKind.AGREEMENT_TO_SIGN: (Role.SIGNATORY,),
    NotificationKind.AGREEMENT_TO_COUNTERSIGN: (Role.LEGAL,),
    NotificationKind.AGREEMENT_ENDED: (Role.SIGNATORY, Role.PARTNER_ADMIN),
    NotificationKind.CHECKPOINT_WITHDRAWN: PARTNER_ROLES,
    NotificationKind.AGREEMENT_ACTIVE: (Role.SIGNATORY, Role.PARTNER_ADMIN),
    NotificationKind.AGREEMENT_DECLINED: (Role.LEGAL,),
    NotificationKind.ACCESS_REQUEST_RECEIVED: (Role.LEGAL, Role.LAB_ADMIN),
    NotificationKind.ACCESS_REQUEST_DECIDED: PARTNER_ROLES,
    NotificationKind.CHECKPOINT_EMBARGOED: PARTNER_ROLES,
    NotificationKind.JOB_CANCELLED: PARTNER_ROLES,
    NotificationKind.WEBHOOK_FAILING: (Role.LAB_ADMIN, Role.PARTNER_ADMIN),
    NotificationKind.OBLIGATION_DUE: PARTNER_ROLES,
    NotificationKind.ACCESS_PAUSED: (*PARTNER_ROLES, Role.LEGAL, Role.LAB_ADMIN),
    NotificationKind.FINDING_SUBMITTED: (Role.LEGAL, Role.LAB_ADMIN),
    NotificationKind.FINDING_REVIEWED: (Role.PARTNER_ADMIN, Role.SIGNATORY, Role.RESEARCHER),
    NotificationKind.INCIDENT_REPORTED: (Role.LAB_ADMIN, Role.LEGAL),
    NotificationKind.RELEASE_DECIDED: (*PARTNER_ROLES, Role.LEGAL, Role.LAB_ADMIN, Role.AUDITOR),
}


class Notification(models.Model):
    """One event told to one person: listed in the app, and emailed once.

    `dedupe_key` names the event (e.g. "access_request.decided:12"): the same event for the same
    person is stored once, so a task that runs twice or a repeated call adds nothing. `emailed_at`
    is claimed before the email goes out, so it goes out once.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=40, choices=NotificationKind.choices)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    url = models.CharField(max_length=500, help_text="A path on this site, e.g. /agreements/3/.")
    dedupe_key = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)
    read_at = models.DateTimeField(null=True, blank=True)
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["user", "dedupe_key"], name="notification_once_per_user_and_event"),
            models.CheckConstraint(
                condition=models.Q(kind__in=NotificationKind.values), name="notification_kind_valid"
            ),
        ]
        indexes = [models.Index(fields=["user", "-created_at"], name="notification_user_recent")]

    def __str__(self) -> str:
        return f"{self.title} (to {self.user})"

    @property
    def is_read(self) -> bool:
        return self.read_at is not None

    @property
    def is_essential(self) -> bool:
        return self.kind in ESSENTIAL_KINDS


class NotificationOptOut(models.Model):
    """A kind of notice this person switched off: neither listed nor emailed from then on."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="notification_opt_outs")
    kind = models.CharField(max_length=40, choices=NotificationKind.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["user", "kind"]
        constraints = [
            models.UniqueConstraint(fields=["user", "kind"], name="notification_opt_out_once"),
            models.CheckConstraint(
                condition=models.Q(kind__in=[k for k in NotificationKind.values if k not in ESSENTIAL_KINDS]),
                name="notification_opt_out_not_essential",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} switched off {self.kind}"
