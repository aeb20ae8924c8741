"""GET /api/v1/stage-reviews/{checkpoint}/: lab staff and auditors read a checkpoint's evidence summary,
per-partner table and decisions; to partners (and for unknown slugs) it does not exist."""

from __future__ import annotations

import pytest

from research.selectors.releases import evidence_sha256
from research.services.releases import release_decide
from tests.api.conftest import client_with, error_of, token_for
from tests.research.test_releases import RATIONALE, World, stage_world

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    """api(user) is a client holding a fresh token of that user's; api(None) is anonymous."""
    return lambda user: client_with(token_for(user) if user is not None else None)


@pytest.fixture
def world(published_version, lab_admin, legal, auditor, partner_a, partner_b, researcher_a, researcher_b) -> World:
    return stage_world(legal, published_version, lab_admin, partner_a, partner_b)


@pytest.mark.parametrize("persona", ["auditor", "legal", "lab_admin"])
def test_lab_staff_read_the_summary_the_partners_and_the_decisions(api, request, world, persona):
    decision = release_decide(
        actor=world.lab_admin,
        checkpoint=world.large,
        decision="release_to_partners",
        rationale=RATIONALE,
        partners=[world.a],
        after=None,
    )
    response = api(request.getfixturevalue(persona)).get("/api/v1/stage-reviews/gpt2-large/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["checkpoint"] == {
        "slug": "gpt2-large",
        "display_name": world.large.display_name,
        "status": "available",
        "public_since": None,
    }
    assert body["evidence_sha256"] == evidence_sha256(body["summary"])
    assert body["summary"]["checkpoint"] == "gpt2-large"
    partners = {row["organization"]: row for row in body["partners"]}
    assert partners["Partner A"]["good_standing"] is True and partners["Partner A"]["live_grant"] is None
    assert partners["Partner B"]["good_standing"] is False
    assert partners["Partner B"]["obligations"]["overdue"] == 1
    assert len(partners["Partner A"]["tokens_by_day"]) >= 50
    [listed] = body["decisions"]
    assert listed["reference"] == decision.reference and listed["rationale"] == RATIONALE
    assert listed["partners"] == ["Partner A"] and listed["amendments"] == [decision.amendments.get().reference]
    assert listed["evidence_sha256"] == decision.evidence_sha256


@pytest.mark.parametrize("persona", ["researcher_a", "admin_a", "researcher_b"])
def test_partners_get_404(api, request, world, persona):
    response = api(request.getfixturevalue(persona)).get("/api/v1/stage-reviews/gpt2-large/")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"


def test_an_unknown_checkpoint_is_404_and_anonymous_callers_401(api, world, auditor):
    response = api(auditor).get("/api/v1/stage-reviews/gpt3/")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    assert api(None).get("/api/v1/stage-reviews/gpt2-large/").status_code == 401


def test_the_schema_documents_the_operation(api, auditor):
    schema = api(auditor).get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/stage-reviews/{checkpoint}/"]["get"]
    assert set(operation["responses"]) >= {"200", "401", "403", "404"}
