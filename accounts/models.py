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
