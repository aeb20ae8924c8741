"""Create (or bring up to date) the demo organisations and logins. Safe to run again."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

import agreements as agreements_app
from accounts import services
from accounts.models import Organization, Role, User
from agreements import services as agreements
from agreements.models import Agreement, AgreementTemplate, TemplateVersion
from models_registry.models import Checkpoint
from portal import demo

DEFAULT_PASSWORD = "modelpact-demo"
TEMPLATE_NAME = "GPT-2 Model Sharing Agreement"
TEMPLATE_NOTE = "The agreement under which partners receive the staged GPT-2 checkpoints."
PURPOSE_A = (
    "Measuring how reliably machine-generated news text can be detected, and building open detectors "
    "that newsrooms can run."
)
PURPOSE_B = "Studying social biases in the samples of the smallest GPT-2 model across prompts in German and English."

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
        parser.add_argument(
            "--create-demo-logins-with-debug-off",
            action="store_true",
            dest="debug_off",
            help=(
                "Run even though DEBUG is off: creates lab staff and partner logins with the given (or the "
                "published demo) password, demo agreements and random-weight checkpoints. Never on a real deployment."
            ),
        )

    def handle(self, *args: object, password: str, debug_off: bool = False, **options: object) -> None:
        if not settings.DEBUG and not debug_off:
            raise CommandError(
                "seed_demo creates lab accounts with a published demo password, so it refuses to run with DEBUG "
                "off. Invite real people instead; to seed a throwaway deployment anyway, pass "
                "--create-demo-logins-with-debug-off (and a --password of your own)."
            )
        fresh = not Organization.objects.filter(name="Partner A").exists()
        if fresh:
            # A new demo starts twelve weeks ago, so the stage review has a history to show.
            with demo.on_day(demo.AGREEMENT_DAYS_AGO + 1, hour=9):
                organizations = self._people(password)
                self._template()
                call_command("checkpoint_demo", stdout=self.stdout)
            version = self._template()
            demo.replay_history(
                sign=self._sign,
                send=lambda organization, checkpoints: self._sent_agreement(
                    self._legal(), organization, version, checkpoints, PURPOSE_A
                ),
            )
            with demo.on_day(2, hour=11):
                self._agreements(organizations)
            demo.decide_release()
        else:
            organizations = self._people(password)
            # Demo weights for the registry, so a one-machine run can generate without real GPT-2 weights.
            call_command("checkpoint_demo", stdout=self.stdout)
            self._agreements(organizations)
        self._seal_records(organizations["Partner A"])
        self._print_logins(password)

    def _people(self, password: str) -> dict[str, Organization]:
        with transaction.atomic():
            organizations = {}
            for spec in [LAB, *PARTNERS]:
                organizations[spec["name"]] = self._organization(spec)
            for org_name, people in PEOPLE.items():
                for email, role, full_name in people:
                    self._user(organizations[org_name], email, role, full_name, password)
        return organizations

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

    @staticmethod
    def _legal() -> User:
        return User.objects.get(email="legal@lab.example")

    def _template(self) -> TemplateVersion:
        """The published agreement template (made from agreements/default_template.md on first run)."""
        if not AgreementTemplate.objects.filter(name=TEMPLATE_NAME).exists():
            body = (Path(agreements_app.__file__).parent / "default_template.md").read_text()
            version = agreements.template_create(
                actor=self._legal(), name=TEMPLATE_NAME, body=body, description=TEMPLATE_NOTE
            )
            agreements.template_version_publish(actor=self._legal(), version=version)
        return TemplateVersion.objects.filter(template__name=TEMPLATE_NAME, status="published").latest("number")

    def _agreements(self, organizations: dict[str, Organization]) -> None:
        """Partner A active on gpt2 + gpt2-medium, Partner B's agreement out for signature."""
        version = self._template()
        small = list(Checkpoint.objects.filter(slug__in=["gpt2", "gpt2-medium"]).order_by("parameter_count"))
        live = [Agreement.Status.ACTIVE, Agreement.Status.OUT_FOR_SIGNATURE, Agreement.Status.PARTNER_SIGNED]

        partner_a = organizations["Partner A"]
        if not Agreement.objects.filter(organization=partner_a, status__in=live).exists():
            agreement = self._sent_agreement(self._legal(), partner_a, version, small, PURPOSE_A)
            for email in ("signer@partner-a.example", "legal@lab.example"):
                agreement.refresh_from_db()
                self._sign(User.objects.get(email=email), agreement)
        partner_b = organizations["Partner B"]
        if not Agreement.objects.filter(organization=partner_b, status__in=live).exists():
            self._sent_agreement(self._legal(), partner_b, version, small[:1], PURPOSE_B)

    def _seal_records(self, partner_a: Organization) -> None:
        """Partner A's sealed record, made now (not left to the worker) so records_verify can check it at once."""
        for active in Agreement.objects.filter(organization=partner_a, status=Agreement.Status.ACTIVE):
            try:
                call_command("records_seal", active.pk, stdout=self.stdout)
            except CommandError as exc:  # no sealing key yet: the demo still works, the record waits
                self.stderr.write(str(exc))

    def _sent_agreement(self, legal, organization, version, checkpoints, purpose):
        draft = agreements.agreement_create(
            actor=legal,
            organization=organization,
            terms=agreements.AgreementTerms(
                template_version=version,
                checkpoints=checkpoints,
                effective_date=timezone.now().date(),
                term_months=12,
                daily_token_quota=50_000,
                purpose=purpose,
            ),
        )
        return agreements.agreement_send(actor=legal, agreement=draft)

    def _sign(self, user: User, agreement) -> None:
        agreements.agreement_sign(
            actor=user,
            agreement=agreement,
            full_name=user.full_name,
            title="Director of Research" if user.email.startswith("signer") else "General Counsel",
            consent=True,
            shown_document_sha256=agreement.document_sha256,
            # Demo data: say so in the evidence rather than pretend a person re-entered a password.
            reauth_method="demo-seed",
            reauth_at=timezone.now(),
            ip="127.0.0.1",
            user_agent="seed_demo",
            time_zone="UTC",
        )

    def _print_logins(self, password: str) -> None:
        self.stdout.write(self.style.SUCCESS(f"Demo logins (password for all: {password})"))
        for org_name, people in PEOPLE.items():
            for email, role, _ in people:
                self.stdout.write(f"  {email:<32} {Role(role).label:<20} {org_name}")
