"""Builders shared by every test: checkpoints, templates, agreements in each state, jobs.

Registered as a pytest plugin by tests/conftest.py (next to the personas), so any test can ask for
these fixtures by name. Every builder goes through the services, as the product does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from django.utils import timezone

from accounts import services as accounts
from accounts.models import Role, User
from agreements import services
from agreements.models import AccessGrant, Agreement, GrantUsage, TemplateVersion
from inference.models import GenerationJob
from models_registry import services as registry
from models_registry.models import Checkpoint
from models_registry.weights import (
    DEMO_CORPUS_PATH,
    DEMO_SHAPES,
    WeightsInfo,
    build_demo_checkpoint,
    inspect_checkpoint,
)

# --- from agreements --------------------------------------------------------------------------------

DEFAULT_TEMPLATE = (Path(__file__).resolve().parents[1] / "agreements" / "default_template.md").read_text()


@pytest.fixture
def published_version(legal) -> TemplateVersion:
    draft = services.template_create(actor=legal, name="GPT-2 Model Sharing Agreement", body=DEFAULT_TEMPLATE)
    return services.template_version_publish(actor=legal, version=draft)


@pytest.fixture
def small_checkpoints(gpt2_stages) -> list[Checkpoint]:
    return list(Checkpoint.objects.filter(slug__in=["gpt2", "gpt2-medium"]).order_by("parameter_count"))


def draft_agreement(legal, organization, version, checkpoints, *, amends=None, replaces_amended=True, **overrides):
    terms = {
        "effective_date": timezone.now().date(),
        "term_months": 12,
        "daily_token_quota": 50_000,
        "purpose": "Studying the detectability of synthetic text in news corpora.",
    }
    terms.update(overrides)
    return services.agreement_create(
        actor=legal,
        organization=organization,
        terms=services.AgreementTerms(template_version=version, checkpoints=checkpoints, **terms),
        amends=amends,
        replaces_amended=replaces_amended,
    )


def sign(user, agreement: Agreement, **overrides):
    """Sign as a signatory or countersign as legal, having just reauthenticated with a password."""
    fields = {
        "full_name": user.full_name,
        "title": "Director of Research",
        "consent": True,
        "shown_document_sha256": agreement.document_sha256,
        "reauth_method": "password",
        "reauth_at": timezone.now() - timedelta(seconds=30),
        "ip": "203.0.113.7",
        "user_agent": "Mozilla/5.0 (test)",
        "time_zone": "Europe/Berlin",
    }
    fields.update(overrides)
    return services.agreement_sign(actor=user, agreement=agreement, **fields)


@pytest.fixture
def draft(legal, partner_a, signer_a, published_version, small_checkpoints) -> Agreement:
    return draft_agreement(legal, partner_a, published_version, small_checkpoints)


@pytest.fixture
def sent(legal, draft) -> Agreement:
    return services.agreement_send(actor=legal, agreement=draft)


@pytest.fixture
def active(legal, signer_a, sent) -> Agreement:
    sign(signer_a, sent)
    sent.refresh_from_db()
    sign(legal, sent)
    sent.refresh_from_db()
    return sent


# --- from models_registry ---------------------------------------------------------------------------

# A version is published only when its text states every obligation term: append this to a short body.
OBLIGATION_TERMS_CLAUSE = (
    "\nFindings on each checkpoint are due {{ obligations.findings_report_days }} days after access starts, the "
    "final report {{ obligations.final_report_days }} days before the end; incidents are reported within "
    "{{ obligations.incident_report_hours }} hours and papers shared {{ obligations.prepublication_review_days }} "
    "days before publication.\n"
)
TEMPLATE_BODY = (
    "# Model-sharing agreement\n\n{{ organization.legal_name }} may use {{ checkpoints }} for {{ purpose }} "
    "from {{ effective_date }} for {{ term_months }} months, up to {{ daily_token_quota }} tokens a day.\n"
) + OBLIGATION_TERMS_CLAUSE
PURPOSE = "Measuring how often GPT-2 samples are mistaken for human-written news articles."


@pytest.fixture(scope="session")
def demo_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, WeightsInfo]]:
    """The four demo checkpoints, built once per test session (about a second after torch loads)."""
    root = tmp_path_factory.mktemp("demo-checkpoints")
    corpus = DEMO_CORPUS_PATH.read_text(encoding="utf-8")
    built = {}
    for slug, shape in DEMO_SHAPES.items():
        folder = root / slug
        info = build_demo_checkpoint(
            folder,
            n_layer=shape.n_layer,
            n_embd=shape.n_embd,
            n_head=shape.n_head,
            seed=registry.DEMO_SEEDS[slug],
            corpus=corpus,
        )
        built[slug] = (folder, info)
    return built


@pytest.fixture
def checkpoints(db) -> dict[str, Checkpoint]:
    """The four GPT-2 stages, as seeded by migration."""
    return {c.slug: c for c in Checkpoint.objects.all()}


@pytest.fixture
def published_template(legal) -> TemplateVersion:
    draft = services.template_create(actor=legal, name="GPT-2 model-sharing agreement", body=TEMPLATE_BODY)
    return services.template_version_publish(actor=legal, version=draft)


MakeAgreement = Callable[..., Agreement]


def signatory_of(organization) -> User:
    """The organisation's signatory (a persona when the test asked for one), so its agreements can be signed."""
    membership = organization.memberships.filter(role=Role.SIGNATORY, user__is_active=True).first()
    if membership is not None:
        return membership.user
    return accounts.user_create(
        actor=None,
        organization=organization,
        email=f"signatory@{organization.pk}.partner.example",
        role=Role.SIGNATORY,
        password="correct horse battery staple",
        full_name="Sam Signatory",
    )


@pytest.fixture
def make_agreement(legal, published_template) -> MakeAgreement:
    """make_agreement(partner_a, ["gpt2"], effective=..., status="active", quota=...) -> Agreement.

    Drafted, sent and (for an active one) signed and countersigned through the services, on its
    effective date when that is in the past: exactly the agreement, grants and events the product makes.
    An amendment keeps the agreement it amends active.
    """

    def make(
        organization,
        slugs: list[str],
        *,
        status: str = Agreement.Status.ACTIVE,
        effective: date | None = None,
        term_months: int = 12,
        quota: int = 50_000,
        amends: Agreement | None = None,
    ) -> Agreement:
        today = timezone.now().date()
        effective = effective or today
        terms = services.AgreementTerms(
            template_version=published_template,
            checkpoints=list(Checkpoint.objects.filter(slug__in=slugs)),
            effective_date=effective,
            term_months=term_months,
            daily_token_quota=quota,
            purpose=PURPOSE,
        )
        signer = signatory_of(organization)
        then = datetime.combine(effective, timezone.now().time(), tzinfo=UTC) if effective < today else None
        with time_machine.travel(then, tick=False) if then else contextlib.nullcontext():
            agreement = services.agreement_create(
                actor=legal, organization=organization, terms=terms, amends=amends, replaces_amended=False
            )
            if status == Agreement.Status.DRAFT:
                return agreement
            agreement = services.agreement_send(actor=legal, agreement=agreement)
            if status == Agreement.Status.OUT_FOR_SIGNATURE:
                return agreement
            assert status == Agreement.Status.ACTIVE, f"make_agreement builds drafts, sent or active, not {status}"
            sign(signer, agreement)
            agreement.refresh_from_db()
            sign(legal, agreement)
        agreement.refresh_from_db()
        return agreement

    return make


def end_agreement(agreement: Agreement, step: str, reason: str, actor=None) -> Agreement:
    """Terminate, supersede or expire an agreement as the agreements lifecycle does: state, then grants."""
    agreement.transition(step)
    agreement.ended_at = timezone.now()
    agreement.end_reason = reason
    agreement.save()
    services.grants_revoke_for_agreement(
        agreement=agreement, actor=actor, reason=f"agreement {agreement.reference} {reason}"
    )
    return agreement


def make_job(
    grant: AccessGrant,
    requester,
    *,
    status: str = GenerationJob.Status.QUEUED,
    max_new_tokens: int = 100,
    num_samples: int = 1,
    tokens_generated: int = 0,
    created_at=None,
) -> GenerationJob:
    finished = status in GenerationJob.FINISHED
    job = GenerationJob.objects.create(
        organization=grant.organization,
        requester=requester,
        checkpoint=grant.checkpoint,
        grant=grant,
        prompt="The agreement says",
        max_new_tokens=max_new_tokens,
        temperature=0.8,
        num_samples=num_samples,
        status=status,
        tokens_generated=tokens_generated,
        created_at=created_at or timezone.now(),
        finished_at=timezone.now() if finished else None,
    )
    # What submission and the job's end write to the usage ledger: its reservation, or what it generated.
    usage, _ = GrantUsage.objects.get_or_create(grant=grant, day=job.created_at.astimezone(UTC).date())
    if finished:
        usage.tokens_used += tokens_generated
    else:
        usage.tokens_reserved += job.expected_tokens
    usage.save()
    return job


def months_ago(months: int) -> date:
    return timezone.now().date() - timedelta(days=31 * months)


# --- from inference ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_weights(demo_folders) -> dict[str, Path]:
    """The folders of the two demo checkpoints Partner A's agreement grants (built once, above)."""
    return {slug: demo_folders[slug][0] for slug in ("gpt2", "gpt2-medium")}


@pytest.fixture
def demo_checkpoints(gpt2_stages, demo_weights) -> dict[str, Checkpoint]:
    registered = {}
    for slug, folder in demo_weights.items():
        checkpoint = Checkpoint.objects.get(slug=slug)
        registered[slug] = registry.checkpoint_register_weights(
            actor=None, checkpoint=checkpoint, folder=folder, info=inspect_checkpoint(folder), is_demo=True
        )
    return registered


@pytest.fixture
def gpt2(demo_checkpoints) -> Checkpoint:
    return demo_checkpoints["gpt2"]


# --- A broker that is down -----------------------------------------------------------------------

CLOSED_PORT = "redis://127.0.0.1:1/0"


def forget_broker_connections(app) -> None:
    # The pools hold connections to the broker they were made for; drop them as Celery does after a
    # fork, so the next send connects to the broker the configuration names now.
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def broker_down(settings):
    """The broker's port is closed and tasks really go to the broker (not run in-process)."""
    from config.celery import app

    names = ("broker_url", "broker_write_url", "broker_read_url", "task_always_eager")
    saved = {name: app.conf[name] for name in names}
    settings.CELERY_BROKER_URL = CLOSED_PORT
    forget_broker_connections(app)
    app.conf.update(broker_url=CLOSED_PORT, broker_write_url=CLOSED_PORT, broker_read_url=CLOSED_PORT)
    app.conf.task_always_eager = False
    assert app.connection_for_write().port == 1
    yield
    forget_broker_connections(app)
    app.conf.update(saved)


@pytest.fixture
def real_broker(settings):
    """Send tasks to Redis for real (unit tests run them eagerly), starting from an empty queue."""
    import redis

    from config.celery import app

    if not settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.skip("worker tests need CELERY_BROKER_URL to point at Redis (make test sets it)")
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    app.conf.task_always_eager = False
    yield
    app.conf.task_always_eager = True
