from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from agreements import services
from agreements.models import Agreement, TemplateVersion
from models_registry.models import Checkpoint

DEFAULT_TEMPLATE = (Path(__file__).resolve().parents[2] / "agreements" / "default_template.md").read_text()


@pytest.fixture
def published_version(legal) -> TemplateVersion:
    draft = services.template_create(actor=legal, name="GPT-2 Model Sharing Agreement", body=DEFAULT_TEMPLATE)
    return services.template_version_publish(actor=legal, version=draft)


@pytest.fixture
def small_checkpoints(gpt2_stages) -> list[Checkpoint]:
    return list(Checkpoint.objects.filter(slug__in=["gpt2", "gpt2-medium"]).order_by("parameter_count"))


def draft_agreement(legal, organization, version, checkpoints, **overrides) -> Agreement:
    terms = {
        "effective_date": timezone.now().date(),
        "term_months": 12,
        "daily_token_quota": 50_000,
        "purpose": "Studying the detectability of synthetic text in news corpora.",
    }
    terms.update(overrides)
    return services.agreement_create(
        actor=legal, organization=organization, template_version=version, checkpoints=checkpoints, **terms
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
