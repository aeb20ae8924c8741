"""Create (or bring up to date) the demo organisations and logins. Safe to run again."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts import services
from accounts.models import Organization, Role, User

DEFAULT_PASSWORD = "modelpact-demo"

LAB = {
    "name": "The Lab",
    "legal_name": "Open Model Lab Ltd",
    "kind": Organization.Kind.LAB,
    "jurisdiction": "England and Wales",
    "address": "1 Research Way\nLondon EC1A 1AA\nUnited Kingdom",
    "contact_email": "legal@lab.example",
}
PARTNERS = [
    {
        "name": "Partner A",
        "legal_name": "Partner A Research Institute",
        "jurisdiction": "Delaware, United States",
        "address": "200 University Avenue\nPalo Alto, CA 94301\nUnited States",
        "contact_email": "admin@partner-a.example",
    },
    {
        "name": "Partner B",
        "legal_name": "Partner B Universität gGmbH",
        "jurisdiction": "Germany",
        "address": "Forschungsstraße 12\n10115 Berlin\nGermany",
        "contact_email": "admin@partner-b.example",
    },
]
# (email, role, full name) per organisation name
PEOPLE = {
    "The Lab": [
        ("admin@lab.example", Role.LAB_ADMIN, "Ada Admin"),
        ("legal@lab.example", Role.LEGAL, "Lena Legal"),
        ("auditor@lab.example", Role.AUDITOR, "Otto Auditor"),
    ],
    "Partner A": [
        ("admin@partner-a.example", Role.PARTNER_ADMIN, "Amir Admin"),
        ("signer@partner-a.example", Role.SIGNATORY, "Sofia Signer"),
        ("researcher@partner-a.example", Role.RESEARCHER, "Ravi Researcher"),
    ],
    "Partner B": [
        ("admin@partner-b.example", Role.PARTNER_ADMIN, "Bea Admin"),
        ("signer@partner-b.example", Role.SIGNATORY, "Stefan Signer"),
        ("researcher@partner-b.example", Role.RESEARCHER, "Rosa Researcher"),
    ],
}


class Command(BaseCommand):
    help = "Create the demo lab, Partner A and Partner B with their users. Idempotent."

    def add_arguments(self, parser):
        parser.add_argument("--password", default=DEFAULT_PASSWORD, help="Password for every demo login.")

    def handle(self, *args: object, password: str, **options: object) -> None:
        with transaction.atomic():
            organizations = {}
            for spec in [LAB, *PARTNERS]:
                organizations[spec["name"]] = self._organization(spec)
            for org_name, people in PEOPLE.items():
                for email, role, full_name in people:
                    self._user(organizations[org_name], email, role, full_name, password)
        self._print_logins(password)

    def _organization(self, spec: dict) -> Organization:
        existing = Organization.objects.filter(name=spec["name"]).first()
        return existing or services.organization_create(actor=None, **spec)

    def _user(self, organization: Organization, email: str, role: str, full_name: str, password: str) -> User:
        user = User.objects.filter(email=email).first()
        if user is None:
            return services.user_create(
                actor=None, organization=organization, email=email, role=role, password=password, full_name=full_name
            )
        if not user.check_password(password):
            services.user_set_password(actor=None, user=user, password=password)
        return user

    def _print_logins(self, password: str) -> None:
        self.stdout.write(self.style.SUCCESS(f"Demo logins (password for all: {password})"))
        for org_name, people in PEOPLE.items():
            for email, role, _ in people:
                self.stdout.write(f"  {email:<32} {Role(role).label:<20} {org_name}")
