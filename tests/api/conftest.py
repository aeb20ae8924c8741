"""API clients for the personas: each holds a real knox token, as a partner's script would.

Partner A has an active agreement for the two demo checkpoints (tests/builders.py); Partner B
has none and is the outsider.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.models import User


def token_for(user: User, **kwargs) -> str:
    _token, key = account_services.api_token_create(actor=None, user=user, **kwargs)
    return key


def client_with(key: str | None) -> APIClient:
    client = APIClient()
    if key is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.fixture
def api() -> Callable[[User | None], APIClient]:
    """api(user) is a client with a fresh token of that user's; api(None) is anonymous."""
    return lambda user: client_with(token_for(user) if user is not None else None)


@pytest.fixture
def no_generation(monkeypatch) -> list[int]:
    """The one seam: jobs are queued but never handed to Celery (which runs eagerly in tests)."""
    queued: list[int] = []
    monkeypatch.setattr("inference.services.enqueue_job", lambda job: queued.append(job.pk))
    return queued


@pytest.fixture
def sealed_record(records_dir, active):
    """Partner A's active agreement with its sealed record, made in-process as activation would
    (in the test's records folder, with the session's sealing key)."""
    from records.models import SealedRecord
    from records.tasks import seal_agreement_record

    assert seal_agreement_record.delay(active.pk, "activated").get() == "ready"
    return SealedRecord.objects.get(agreement=active, occasion="activated")


def job_body(**overrides) -> dict:
    body = {
        "checkpoint": "gpt2",
        "prompt": "The partner shall label every sample",
        "max_new_tokens": 8,
        "temperature": 0.0,
        "num_samples": 1,
    }
    body.update(overrides)
    return body


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]
