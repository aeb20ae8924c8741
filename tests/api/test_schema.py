"""schemathesis over the whole OpenAPI schema, as a partner researcher and as the lab's auditor.

Every operation gets at least 100 generated requests that fit the schema and up to 100 that do not.
Every response must be a non-5xx that matches the schema (status, content type, body). Requests go to
the WSGI application in-process, inside the test's transaction.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import job_body, token_for
from tests.api.test_isolation import incident_body

pytestmark = pytest.mark.django_db

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 100


class InTransactionWSGI:
    """The project's WSGI application, minus the per-request connection recycling.

    Django closes "obsolete" connections when a request ends; inside a test's transaction that would
    be the test's own connection. The test client does the same to its handler.
    """

    def __init__(self) -> None:
        self.handler = WSGIHandler()

    def __call__(self, environ, start_response):
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            return list(self.handler(environ, start_response))
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)


@pytest.fixture
def api_schema(settings, monkeypatch):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"api": "1000000/min"}}
    # `GET /api/v1/jobs/{id}/?wait=30` would hold each generated request for up to 30 s on a job no
    # worker runs here: the wait answers at once (tests/api/test_jobs.py covers the real one).
    monkeypatch.setattr("inference.api.job_wait_finished", lambda job_id, timeout_s: False)
    raw = SchemaGenerator().get_schema(request=None, public=True)
    schema = schemathesis.openapi.from_dict(raw)
    schema.app = InTransactionWSGI()
    return schema


@pytest.fixture
def partner_a_data(api, researcher_a, active, gpt2, no_generation, settings, tmp_path) -> None:
    """Rows for the generated requests to find: a job, an access request, a finding and an incident of Partner A's."""
    client = api(researcher_a)
    client.post("/api/v1/jobs/", job_body(), format="json")
    client.post(
        "/api/v1/access-requests/",
        {"checkpoints": ["gpt2-large"], "purpose": "Measuring detectability of generated news text."},
        format="json",
    )
    # A finding (with a PDF) and an incident of Partner A's, for the findings and incidents operations.
    settings.FINDINGS_DIR = tmp_path / "findings"
    client.post("/api/v1/findings/", finding_upload(), format="multipart")
    client.post("/api/v1/incidents/", incident_body(), format="json")


def finding_upload() -> dict:
    return {
        "title": "Headlines make gpt2 samples convincing",
        "category": "human_detection",
        "checkpoints": ["gpt2"],
        "summary": "Raters mistook gpt2 samples for news articles when the prompt was a headline.",
        "attachments": [SimpleUploadedFile("study.pdf", b"%PDF-1.7\n%%EOF\n", content_type="application/pdf")],
    }


def has_inputs(operation) -> bool:
    return bool(operation.path_parameters or operation.query or operation.headers or operation.body)


def run_operation(operation, mode: schemathesis.GenerationMode, headers: dict, calls: Counter) -> None:
    strategy = operation.as_strategy(generation_mode=mode)

    @given(case=strategy)
    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def call(case) -> None:
        calls[(operation.label, mode.value)] += 1
        case.call_and_validate(headers=headers, checks=CHECKS)

    try:
        call()
    except Unsatisfiable:
        # Negative mode: some inputs have no invalid form that survives serialisation (e.g. a free string).
        assert not mode.is_positive, operation.label


@pytest.mark.parametrize("persona", ["researcher_a", "auditor"])
def test_every_operation_answers_within_the_schema(request, persona, api_schema, partner_a_data):
    user = request.getfixturevalue(persona)
    headers = {"Authorization": f"Token {token_for(user)}"}
    calls: Counter = Counter()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 29, [op.label for op in operations]
    for operation in operations:
        run_operation(operation, schemathesis.GenerationMode.POSITIVE, headers, calls)
        if has_inputs(operation):
            run_operation(operation, schemathesis.GenerationMode.NEGATIVE, headers, calls)
    print(f"\n{persona}: requests per operation and mode", dict(sorted(calls.items())))
    for operation in operations:
        if has_inputs(operation):
            assert calls[(operation.label, "positive")] >= EXAMPLES, (operation.label, calls)
