"""Bad input gets a 4xx in the one error shape, never a 500, and writes nothing the answer does not admit to.

Bodies over Django's size limit, JSON nested thousands deep, numbers where text belongs, purposes
made of invisible characters, and a broker that is down while jobs are submitted.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from agreements.models import AccessRequest
from audit.models import AuditEvent
from inference import services as inference_services
from inference.models import GenerationJob
from tests.api.conftest import error_of, job_body

pytestmark = pytest.mark.django_db

JOBS = "/api/v1/jobs/"
ACCESS_REQUESTS = "/api/v1/access-requests/"
PURPOSE = "Measuring how often readers mistake GPT-2 samples for news."
CSRF_SECRET = "a" * 32  # the format Django accepts for a CSRF cookie and header


def session_client(user) -> APIClient:
    """A browser session with CSRF enforced, as the API sees one: cookie and header agree."""
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    client.cookies[settings.CSRF_COOKIE_NAME] = CSRF_SECRET
    client.credentials(HTTP_X_CSRFTOKEN=CSRF_SECRET)
    return client


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def no_job_written() -> None:
    assert not GenerationJob.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="job.").exists()


# --- 1. A body over DATA_UPLOAD_MAX_MEMORY_SIZE --------------------------------------------------


def assert_too_large(response) -> None:
    assert response.status_code == 413, response.content[:300]
    error = error_of(response)
    assert error["code"] == "request_too_large"
    assert error["message"] == "The request body is over the limit of 2.5 MB (2,621,440 bytes); send less."
    assert error["details"] == {"limit_bytes": settings.DATA_UPLOAD_MAX_MEMORY_SIZE}


def big_job_body() -> str:
    body = json.dumps(job_body(prompt="x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)))
    assert len(body) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return body


def test_a_json_body_over_the_limit_is_413_with_a_token(api, researcher_a, active, gpt2):
    response = api(researcher_a).post(JOBS, big_job_body(), content_type="application/json")
    assert_too_large(response)
    no_job_written()


def test_a_json_body_over_the_limit_is_413_in_a_browser_session(researcher_a, active, gpt2):
    client = session_client(researcher_a)
    # The session's CSRF check reads the body first (request.POST), before the view asks for the data.
    assert_too_large(client.post(JOBS, big_job_body(), content_type="application/json"))
    no_job_written()
    assert client.post(JOBS, job_body(), format="json").status_code == 202, "the same session with a fitting body"


def test_an_access_request_over_the_limit_is_413(api, researcher_a, gpt2_stages):
    body = json.dumps({"checkpoints": ["gpt2-large"], "purpose": "p" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)})
    assert_too_large(api(researcher_a).post(ACCESS_REQUESTS, body, content_type="application/json"))
    assert not AccessRequest.objects.exists()


def test_a_multipart_text_field_over_the_limit_is_413_on_record_verification(api, researcher_a):
    # Files do not count against the limit; a PDF pasted into a text field does.
    response = api(researcher_a).post(
        "/api/v1/records/verify/", {"file": "%PDF-" + "0" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE}, format="multipart"
    )
    assert_too_large(response)


# --- 2. JSON nested too deeply ---------------------------------------------------------------------

DEEP_MESSAGE = (
    "JSON parse error - arrays or objects nest more than 32 levels deep; no request to this API needs that many."
)


@pytest.mark.parametrize(
    "body",
    [
        nested(2000),
        '{"checkpoint": "gpt2", "prompt": ' + nested(2000) + "}",
        '{"checkpoint": "gpt2", "prompt": ' + '{"a": ' * 2000 + "1" + "}" * 2000 + "}",
        nested(33),
    ],
    ids=["a-bare-array", "in-a-field", "objects", "one-level-too-deep"],
)
def test_json_nested_too_deeply_is_400_malformed_request(api, researcher_a, active, gpt2, body):
    response = api(researcher_a).post(JOBS, body, content_type="application/json")
    assert response.status_code == 400
    assert error_of(response) == {"code": "malformed_request", "message": DEEP_MESSAGE, "details": {}}
    no_job_written()


def test_json_nested_too_deeply_is_400_in_a_browser_session_too(researcher_a, active, gpt2):
    response = session_client(researcher_a).post(JOBS, nested(2000), content_type="application/json")
    assert response.status_code == 400
    assert error_of(response)["code"] == "malformed_request" and error_of(response)["message"] == DEEP_MESSAGE
    no_job_written()


def test_nesting_within_the_limit_reaches_the_serializer_and_brackets_in_text_do_not_count(
    api, researcher_a, active, gpt2
):
    client = api(researcher_a)
    body = json.dumps({**job_body(), "prompt": json.loads(nested(31))})  # 32 levels with the object
    response = client.post(JOBS, body, content_type="application/json")
    assert response.status_code == 400
    assert error_of(response)["details"] == {"prompt": ["Must be a string (text in double quotes), not a list."]}
    accepted = client.post(JOBS, job_body(prompt="[{" * 500 + ' "quoted \\" [ "'), format="json")
    assert accepted.status_code == 202, accepted.content
    assert GenerationJob.objects.get().prompt.startswith("[{[{")


def test_malformed_json_is_still_400_malformed_request(api, researcher_a, active, gpt2):
    client = api(researcher_a)
    for body in ('{"checkpoint": "gpt2", "prompt": ', b'{"prompt": "\xff"}', '{"prompt": NaN}'):
        response = client.post(JOBS, body, content_type="application/json")
        assert response.status_code == 400, body
        error = error_of(response)
        assert error["code"] == "malformed_request" and error["message"].startswith("JSON parse error - "), error
    no_job_written()


# --- 7. Numbers where text belongs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        ("prompt", 5, "a number"),
        ("prompt", 1.5, "a number"),
        ("prompt", True, "true or false"),
        ("checkpoint", 1, "a number"),
    ],
)
def test_a_job_field_that_takes_text_refuses_anything_else(api, researcher_a, active, gpt2, field, value, kind):
    response = api(researcher_a).post(JOBS, job_body(**{field: value}), format="json")
    assert response.status_code == 400
    error = error_of(response)
    message = f"Must be a string (text in double quotes), not {kind}."
    assert error["code"] == "invalid" and error["details"] == {field: [message]}
    assert error["message"] == f"Check the request: {field}: {message.rstrip('.')}."
    no_job_written()


def test_an_access_request_refuses_a_number_for_the_purpose_or_a_checkpoint(api, researcher_a, gpt2_stages):
    client = api(researcher_a)
    response = client.post(ACCESS_REQUESTS, {"checkpoints": ["gpt2-large"], "purpose": 10**25}, format="json")
    assert response.status_code == 400
    assert error_of(response)["details"] == {"purpose": ["Must be a string (text in double quotes), not a number."]}
    response = client.post(ACCESS_REQUESTS, {"checkpoints": [124], "purpose": PURPOSE}, format="json")
    assert response.status_code == 400
    assert error_of(response)["details"] == {
        "checkpoints": {"0": ["Must be a string (text in double quotes), not a number."]}
    }
    assert not AccessRequest.objects.exists()


# --- 6. A purpose of invisible characters --------------------------------------------------------

SHORT = "Describe the research purpose in at least 20 characters."


@pytest.mark.parametrize(
    ("purpose", "message"),
    [
        ("\u200b" * 25, f"{SHORT} It has 0 visible characters."),
        ("\u2060\ufeff\u00ad" * 10, f"{SHORT} It has 0 visible characters."),
        (
            "Study" + "\u200b" * 30 + " bias",
            "Describe the research purpose in at least 20 characters. It has 10 visible characters.",
        ),
        ("a" + " " * 30 + "b", "Describe the research purpose in at least 20 characters. It has 3 visible characters."),
    ],
    ids=["zero-width-spaces", "word-joiners-and-soft-hyphens", "padded-inside", "spaces-inside"],
)
def test_a_purpose_must_have_20_visible_characters(api, researcher_a, gpt2_stages, purpose, message):
    response = api(researcher_a).post(
        ACCESS_REQUESTS, {"checkpoints": ["gpt2-large"], "purpose": purpose}, format="json"
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid" and error["details"] == {"purpose": [message]}
    assert not AccessRequest.objects.exists()


def test_a_purpose_with_invisible_characters_at_its_ends_is_stored_without_them(api, researcher_a, gpt2_stages):
    response = api(researcher_a).post(
        ACCESS_REQUESTS, {"checkpoints": ["gpt2-large"], "purpose": "\ufeff\u200b" + PURPOSE + "\u2060"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["purpose"] == PURPOSE == AccessRequest.objects.get().purpose


# --- 4. The broker is down -------------------------------------------------------------------------


# Transactional: the job is sent when its transaction commits, before the answer is written, as in
# production; inside a test's transaction nothing would commit.
@pytest.mark.django_db(transaction=True)
def test_with_the_broker_down_a_job_is_accepted_once_and_says_its_dispatch_is_delayed(
    api, researcher_a, active, gpt2, broker_down, caplog
):
    client = api(researcher_a)
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="inference.services"):
        first = client.post(JOBS, job_body(), format="json", HTTP_IDEMPOTENCY_KEY="retry-me")
    assert time.perf_counter() - started < 3, "a broker that is down must not hold the request for long"
    assert first.status_code == 202, first.content
    job = GenerationJob.objects.get()
    assert first.json()["id"] == job.pk and first.json()["status"] == "queued"
    assert first.json()["dispatch_delayed"] is True and first["Dispatch-Delayed"] == "true"
    assert job.last_enqueued_at is None, "marked as never sent, for the sweeper"
    assert AuditEvent.objects.filter(action="job.submitted").count() == 1
    assert f"Job #{job.pk} is saved but could not be sent to queue gpu (OperationalError: " in caplog.text

    again = client.post(JOBS, job_body(), format="json", HTTP_IDEMPOTENCY_KEY="retry-me")
    assert again.status_code == 202 and again.json()["id"] == job.pk and again["Idempotent-Replayed"] == "true"
    assert again.json()["dispatch_delayed"] is True
    assert GenerationJob.objects.count() == 1, "a retry does not make (or charge for) a second job"
    assert client.get(f"{JOBS}{job.pk}/").json()["dispatch_delayed"] is True


@pytest.mark.django_db(transaction=True)
def test_with_the_broker_down_the_sweeper_keeps_the_job_and_sends_it_once_the_broker_is_back(
    researcher_a, active, gpt2, broker_down, monkeypatch
):
    from inference import tasks
    from tests.inference.test_services import params

    job = inference_services.job_submit(actor=researcher_a, checkpoint=gpt2, params=params())
    assert job.last_enqueued_at is None
    assert inference_services.jobs_sweep()["resent"] == [job.pk]  # still down: sent, failed, still marked
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.QUEUED and job.last_enqueued_at is None

    sent = []
    monkeypatch.setattr(tasks.run_job, "apply_async", lambda args, queue, **limits: sent.append((args, queue)))
    assert inference_services.jobs_sweep()["resent"] == [job.pk], "never sent: no wait for the requeue delay"
    assert sent == [([job.pk], "gpu")]
    job.refresh_from_db()
    assert job.last_enqueued_at is not None
    assert inference_services.jobs_sweep()["resent"] == [], "sent once; not again until the requeue delay"
    assert sent == [([job.pk], "gpu")]


def test_a_job_sent_normally_is_not_marked_delayed(api, researcher_a, active, gpt2, no_generation):
    response = api(researcher_a).post(JOBS, job_body(), format="json")
    assert response.status_code == 202
    assert response.json()["dispatch_delayed"] is False and "Dispatch-Delayed" not in response
