"""Eight requests for the same checkpoint sent at once by one organisation: one pending request, not several.

Real concurrency: eight threads, each with its own database connection, against PostgreSQL.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections

from agreements.models import AccessRequest
from audit import events
from audit.models import AuditEvent
from tests.api.conftest import client_with, error_of, token_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks need PostgreSQL"),
]

PARALLEL = 8
BODY = {"checkpoints": ["gpt2-large"], "purpose": "Measuring how often readers mistake GPT-2 samples for news."}


def post_at_once(clients) -> list:
    start = threading.Barrier(len(clients))
    responses: list = [None] * len(clients)
    errors: list[BaseException] = []

    def send(index: int) -> None:
        try:
            start.wait()
            responses[index] = clients[index].post("/api/v1/access-requests/", BODY, format="json")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()  # this thread's own connection

    threads = [threading.Thread(target=send, args=(index,)) for index in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and all(response is not None for response in responses)
    return responses


def test_eight_requests_at_once_make_one_pending_request_and_seven_clear_refusals(
    gpt2_stages, researcher_a, signer_a, admin_a
):
    users = [researcher_a, signer_a, admin_a]
    clients = [client_with(token_for(users[index % len(users)])) for index in range(PARALLEL)]
    responses = post_at_once(clients)

    assert sorted(response.status_code for response in responses) == [201] + [400] * (PARALLEL - 1)
    pending = AccessRequest.objects.get(status=AccessRequest.Status.PENDING)
    assert list(pending.checkpoints.values_list("slug", flat=True)) == ["gpt2-large"]
    assert AccessRequest.objects.count() == 1
    assert AuditEvent.objects.filter(action=events.ACCESS_REQUEST_CREATED).count() == 1
    for response in responses:
        if response.status_code == 201:
            assert response.json()["id"] == pending.pk
            continue
        error = error_of(response)
        message = f"gpt2-large is already requested (request #{pending.pk} is pending)."
        assert error["code"] == "invalid" and error["details"] == {"checkpoints": [message]}
        assert error["message"] == f"Check the request: checkpoints: {message}"
