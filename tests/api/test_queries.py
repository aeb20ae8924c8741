"""SQL queries per request stay the same with 1, 10 and 100 rows, on every API list and every list page.

Each case grows its data in steps and counts the queries of one request at each step, after a warm-up
request (sessions, content types and the like are cached by then).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from knox.models import AuthToken

from accounts import services as accounts
from agreements import services as access
from agreements import services as agreements
from agreements.models import AccessGrant
from audit import events
from audit.services import audit_append
from inference import services as inference
from models_registry.models import Checkpoint
from tests.api.conftest import client_with, token_for
from tests.builders import DEFAULT_TEMPLATE, draft_agreement
from tests.inference.test_services import params

pytestmark = pytest.mark.django_db
STEPS = (1, 10, 100)


def counts_as_rows_grow(get: Callable, grow: Callable[[int, int], None], rows_in: Callable | None = None) -> dict:
    """{rows: queries} for one request at 1, 10 and 100 rows; `grow(start, stop)` adds rows start..stop-1."""
    made = 0
    counts = {}
    get()  # warm-up
    for step in STEPS:
        grow(made, step)
        made = step
        with CaptureQueriesContext(connection) as queries:
            response = get()
        assert response.status_code == 200, response.content[:500]
        if rows_in is not None:
            assert rows_in(response) >= min(step, 50), f"the response should show the {step} rows"
        counts[step] = len(queries)
    return counts


@pytest.fixture
def grow(researcher_a, legal, partner_a, active, gpt2, published_version, small_checkpoints, no_generation):
    """Row makers, each through the services (bulk rows only where no service makes them alone)."""

    def jobs(start: int, stop: int) -> None:
        for i in range(start, stop):
            inference.job_submit(actor=researcher_a, checkpoint=gpt2, params=params(seed=i))

    def agreement_drafts(start: int, stop: int) -> list:
        return [draft_agreement(legal, partner_a, published_version, small_checkpoints) for _ in range(start, stop)]

    def grants(start: int, stop: int) -> None:
        now = timezone.now()
        AccessGrant.objects.bulk_create(
            AccessGrant(
                organization=partner_a,
                checkpoint=gpt2,
                agreement=agreement,
                starts_at=now - timedelta(days=1),
                ends_at=now + timedelta(days=30),
                daily_token_quota=1000,
            )
            for agreement in agreement_drafts(start, stop)
        )

    def access_requests(start: int, stop: int) -> None:
        large = Checkpoint.objects.get(slug="gpt2-large")
        for _ in range(start, stop):
            request = access.access_request_create(
                actor=researcher_a, checkpoints=[large], purpose="Measuring detectability of generated text."
            )
            access.access_request_withdraw(actor=researcher_a, access_request=request)  # so the next may ask

    def audit_events(start: int, stop: int) -> None:
        for i in range(start, stop):
            audit_append(actor=legal, action=events.ORGANIZATION_UPDATED, target=partner_a, data={"i": i})

    def organizations(start: int, stop: int) -> None:
        for i in range(start, stop):
            accounts.organization_create(actor=None, name=f"Partner {i:03d}", legal_name=f"Partner {i:03d} Ltd")

    def templates(start: int, stop: int) -> None:
        for i in range(start, stop):
            agreements.template_create(actor=legal, name=f"Template {i:03d}", body=DEFAULT_TEMPLATE)

    def tokens(start: int, stop: int) -> None:
        for _ in range(start, stop):  # past the service's 20 live tokens a person: straight to knox
            AuthToken.objects.create(user=researcher_a)

    return {
        "jobs": jobs,
        "agreements": lambda start, stop: agreement_drafts(start, stop) and None,
        "grants": grants,
        "access_requests": access_requests,
        "audit_events": audit_events,
        "organizations": organizations,
        "templates": templates,
        "tokens": tokens,
    }


API_LISTS = [
    # (url, persona, what grows)
    ("/api/v1/jobs/", "researcher_a", "jobs"),
    ("/api/v1/agreements/", "auditor", "agreements"),  # drafts: partners see none until sent
    ("/api/v1/grants/", "researcher_a", "grants"),
    ("/api/v1/access-requests/", "researcher_a", "access_requests"),
    ("/api/v1/audit/events/", "auditor", "audit_events"),
    # The registry is the four GPT-2 stages; what grows under it is the organisation's use.
    ("/api/v1/checkpoints/", "researcher_a", "jobs"),
    ("/api/v1/checkpoints/", "auditor", "grants"),
]


@pytest.mark.parametrize("url,persona,rows", API_LISTS)
def test_api_lists_make_the_same_queries_for_1_10_and_100_rows(request, grow, url, persona, rows):
    client = client_with(token_for(request.getfixturevalue(persona)))
    shown = None if "checkpoints" in url else (lambda response: len(response.json()["results"]))
    counts = counts_as_rows_grow(lambda: client.get(url, {"page_size": 200}), grow[rows], shown)
    assert len(set(counts.values())) == 1, counts


PAGES = [
    ("/organizations/", "lab_admin", "organizations"),
    ("/templates/", "legal", "templates"),
    ("/agreements/", "legal", "agreements"),
    ("/checkpoints/", "legal", "grants"),
    ("/checkpoints/", "researcher_a", "jobs"),
    ("/access-requests/", "researcher_a", "access_requests"),
    ("/access-requests/", "legal", "access_requests"),
    ("/audit/", "auditor", "audit_events"),
    ("/jobs/", "researcher_a", "jobs"),
    ("/jobs/", "auditor", "jobs"),
    ("/account/tokens/", "researcher_a", "tokens"),
]


@pytest.mark.parametrize("url,persona,rows", PAGES)
def test_list_pages_make_the_same_queries_for_1_10_and_100_rows(request, client, grow, url, persona, rows):
    client.force_login(request.getfixturevalue(persona))
    counts = counts_as_rows_grow(lambda: client.get(url), grow[rows])
    assert len(set(counts.values())) == 1, counts
