"""Agreements, grants, jobs and demo weights for registry tests.

Agreements are made directly with the ORM (an active agreement on a published template version),
then grants come from models_registry.services.grants_create_for_agreement, as they do when a
real agreement is countersigned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from agreements.models import Agreement, AgreementTemplate, TemplateVersion
from inference.models import GenerationJob
from models_registry import services
from models_registry.models import AccessGrant, Checkpoint
from models_registry.weights import DEMO_CORPUS_PATH, DEMO_SHAPES, WeightsInfo, build_demo_checkpoint

TEMPLATE_BODY = (
    "# Model-sharing agreement\n\n{{ organization.legal_name }} may use {{ checkpoints }} for {{ purpose }} "
    "from {{ effective_date }} for {{ term_months }} months, up to {{ daily_token_quota }} tokens a day.\n"
)
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
            seed=services.DEMO_SEEDS[slug],
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
    template = AgreementTemplate.objects.create(name="GPT-2 model-sharing agreement", created_by=legal)
    return TemplateVersion.objects.create(
        template=template,
        number=1,
        body=TEMPLATE_BODY,
        status=TemplateVersion.Status.PUBLISHED,
        sha256=hashlib.sha256(TEMPLATE_BODY.encode()).hexdigest(),
        created_by=legal,
        published_at=timezone.now(),
        published_by=legal,
    )


MakeAgreement = Callable[..., Agreement]


@pytest.fixture
def make_agreement(legal, published_template) -> MakeAgreement:
    """make_agreement(partner_a, ["gpt2"], effective=..., status="active", quota=...) -> Agreement.

    An active agreement gets its grants, exactly as countersigning creates them.
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
        agreement = Agreement.objects.create(
            organization=organization,
            template_version=published_template,
            status=status,
            effective_date=effective or timezone.now().date(),
            term_months=term_months,
            daily_token_quota=quota,
            purpose=PURPOSE,
            amends=amends,
            created_by=legal,
            activated_at=timezone.now() if status == Agreement.Status.ACTIVE else None,
        )
        agreement.checkpoints.set(Checkpoint.objects.filter(slug__in=slugs))
        if status == Agreement.Status.ACTIVE:
            services.grants_create_for_agreement(agreement=agreement, actor=legal)
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
    return GenerationJob.objects.create(
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


def months_ago(months: int) -> date:
    return timezone.now().date() - timedelta(days=31 * months)
