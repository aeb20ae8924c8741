"""Provenance: samples carry the watermark; a check says where a text came from, to each caller what they may see."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
import time_machine
from django.core.cache import cache
from rest_framework.test import APIClient

from audit.models import AuditEvent
from inference import provenance, services, tasks, watermark
from inference.models import GenerationJob
from inference.selectors import sample_matches
from inference.services import JobParams
from tests.api.conftest import client_with, error_of, token_for

pytestmark = pytest.mark.django_db

CHECK = "/api/v1/provenance/check/"


def run_job(user, checkpoint, **overrides) -> GenerationJob:
    values = {
        "prompt": "The partner shall label every sample",
        "max_new_tokens": 80,
        "temperature": 0.9,
        "top_k": 0,
        "top_p": 0.9,
        "num_samples": 1,
        "seed": 21,
    }
    values.update(overrides)
    job = services.job_submit(actor=user, checkpoint=checkpoint, params=JobParams(**values))
    tasks.run_job.apply(args=[job.pk])
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.SUCCEEDED, job.error_message
    return job


@pytest.fixture
def api():
    """api(user): a client holding a fresh API token of that user's."""
    return lambda user: client_with(token_for(user))


@pytest.fixture
def sample_a(researcher_a, active, gpt2):
    return run_job(researcher_a, gpt2).samples.get()


def cut(text: str) -> str:
    """A passage copied out of the sample: its middle, as it was."""
    words = text.split(" ")
    return " ".join(words[5:-5])


def mangled(text: str) -> str:
    """The middle of the sample re-spaced and re-cased: the index still finds it (the watermark, being
    on tokens, does not survive re-casing)."""
    return "  ".join(text.split()[5:-5]).upper()


def check(client: APIClient, text: str) -> dict:
    response = client.post(CHECK, {"text": text}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def test_samples_carry_the_watermark_scheme_and_key_id(sample_a, researcher_a, api):
    assert sample_a.watermark_scheme == watermark.SCHEME
    assert sample_a.watermark_key_id == provenance.current_key().key_id
    body = api(researcher_a).get(f"/api/v1/jobs/{sample_a.job_id}/").json()
    assert body["watermark"]["applied"] is True
    assert body["samples"][0]["watermark_scheme"] == watermark.SCHEME
    assert body["samples"][0]["watermark_key_id"] == sample_a.watermark_key_id


def test_a_greedy_job_says_it_carries_no_watermark(researcher_a, active, gpt2, api, client):
    job = run_job(researcher_a, gpt2, temperature=0.0, max_new_tokens=12)
    assert job.samples.get().watermark_scheme == ""
    body = api(researcher_a).get(f"/api/v1/jobs/{job.pk}/").json()
    assert body["watermark"]["applied"] is False
    assert "greedy" in body["watermark"]["note"]
    client.force_login(researcher_a)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "greedy jobs cannot carry one" in page


def test_anonymous_callers_learn_the_verdict_and_the_agreement_only(sample_a, active):
    body = check(client_with(None), cut(sample_a.text))
    assert body["watermark"]["verdict"] == "watermarked"
    assert body["watermark"]["key_id"] == sample_a.watermark_key_id
    assert body["disclosure"] == "public"
    [match] = body["matches"]
    assert match["agreement"] == active.reference and match["sample"] is None
    assert sample_a.text[:30] not in str(body) and "Partner A" not in str(body)


def test_the_owner_and_the_lab_see_the_sample_and_an_outsider_sees_nothing_of_it(
    sample_a, researcher_a, researcher_b, auditor, api
):
    passage = mangled(sample_a.text)
    own = check(api(researcher_a), passage)
    assert own["disclosure"] == "own organization"
    assert own["matches"][0]["sample"]["job"] == sample_a.job_id
    assert own["matches"][0]["sample"]["text"] == sample_a.text

    lab = check(api(auditor), passage)
    assert lab["disclosure"] == "full"
    assert lab["matches"][0]["sample"]["organization"] == sample_a.job.organization.name

    outsider = check(api(researcher_b), cut(sample_a.text))
    assert outsider["watermark"]["verdict"] == "watermarked"  # the watermark is no secret of A's
    assert outsider["matches"] == []
    assert sample_a.text[:30] not in str(outsider)


def test_a_partners_lookup_reads_its_own_samples_only(sample_a, partner_a, partner_b):
    # Scoped in the query, not after it: other organisations' matches never crowd out a partner's own.
    passage = mangled(sample_a.text)
    assert [m.sample_id for m in sample_matches(text=passage)] == [sample_a.pk]
    assert [m.sample_id for m in sample_matches(text=passage, organization_id=partner_a.pk)] == [sample_a.pk]
    assert sample_matches(text=passage, organization_id=partner_b.pk) == []


def test_every_check_is_audited_with_the_hash_and_length_never_the_text(sample_a):
    passage = cut(sample_a.text)
    check(client_with(None), passage)
    event = AuditEvent.objects.filter(action="provenance.checked").latest("seq")
    assert event.data["text_sha256"] == hashlib.sha256(passage.encode()).hexdigest()
    assert event.data["text_length"] == len(passage)
    assert event.data["verdict"] == "watermarked"
    assert passage[:20] not in str(event.data)


def test_human_text_is_neither_watermarked_nor_matched(sample_a):
    human = (
        "The licenses for most software and other practical works are designed to take away your freedom to "
        "share and change the works. By contrast, the GNU General Public License is intended to guarantee your "
        "freedom to share and change all versions of a program, to make sure it remains free software for all "
        "its users. We, the Free Software Foundation, use the GNU General Public License for most of our software."
    )
    body = check(client_with(None), human)
    assert body["watermark"]["verdict"] == "not watermarked"
    assert body["matches"] == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        ("x" * 20_001, "20,000"),
        ("%PDF-1.7\x01\x02\x1b binary", "control characters"),
        ("PDF\x00binary", "Null characters"),
        (12345, "string"),
        (None, "null"),
    ],
)
def test_bad_input_gets_a_clear_400(text, message):
    response = client_with(None).post(CHECK, {"text": text}, format="json")
    assert response.status_code == 400
    assert message in str(error_of(response))
    assert not AuditEvent.objects.filter(action="provenance.checked").exists()


@pytest.mark.parametrize(
    "text",
    ["the " * 2000, "<script>alert(1)</script><p>Hello <b>there</b></p>", "a", "x" * 20_000],
)
def test_odd_but_valid_text_gets_a_verdict_not_an_error(text, sample_a):
    body = check(client_with(None), text)
    assert body["watermark"]["verdict"] in {"too short to tell", "not watermarked"}


def test_a_missing_text_field_is_a_clear_400():
    response = client_with(None).post(CHECK, {}, format="json")
    assert response.status_code == 400
    assert "text" in error_of(response)["details"]


def test_the_31st_anonymous_check_in_a_minute_is_refused_with_429(db, client, researcher_a):
    cache.clear()
    anonymous = client_with(None)
    # Within one minute's window, however long the 32 requests take on a busy machine.
    with time_machine.travel(datetime(2026, 12, 6, 12, 0, 5, tzinfo=UTC), tick=False):
        for _ in range(30):
            assert anonymous.post(CHECK, {"text": "hello"}, format="json").status_code == 200
        refused = anonymous.post(CHECK, {"text": "hello"}, format="json")
        assert refused.status_code == 429
        assert error_of(refused)["code"] == "throttled" and int(refused["Retry-After"]) >= 1
        # The page shares the budget: the same address is refused there too, with a clear message.
        page = client.post("/provenance/", {"text": "hello"})
        assert page.status_code == 429 and "Too many checks" in page.content.decode()
        # Signed-in users are not held to the anonymous budget.
        signed_in = client_with(token_for(researcher_a)).post(CHECK, {"text": "hello"}, format="json")
        assert signed_in.status_code == 200


def test_the_page_checks_a_text_and_shows_what_the_caller_may_see(sample_a, client, researcher_a):
    passage = cut(sample_a.text)
    anonymous = client.post("/provenance/", {"text": passage}).content.decode()
    assert "Watermarked" in anonymous and sample_a.job.grant.agreement.reference in anonymous
    assert f"Job #{sample_a.job_id}" not in anonymous
    client.force_login(researcher_a)
    own = client.post("/provenance/", {"text": passage}).content.decode()
    assert f"Job #{sample_a.job_id}" in own
    empty = client.post("/provenance/", {"text": ""})
    assert empty.status_code == 400 and "it is empty" in empty.content.decode()
