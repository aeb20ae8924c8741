"""Every /api/v1 route, method and caller, with the status each caller must get.

The routes come from the URL resolver, so a new endpoint that is not in MATRIX fails
test_every_route_and_method_is_in_the_matrix until someone decides who may call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from knox.models import AuthToken

from inference.models import GenerationJob
from records.selectors import record_file_bytes
from tests.api.conftest import client_with, error_of, job_body, token_for

pytestmark = pytest.mark.django_db

CALLERS = ("other", "anonymous", "revoked", "auditor", "own")  # own last: its writes change the objects


# (route, method) -> status for each caller in CALLERS order: other organisation, anonymous, a revoked
# token (of the owner's), the lab's auditor, and the owning organisation's researcher.
MATRIX: dict[tuple[str, str], tuple[int, int, int, int, int]] = {
    ("api/v1/checkpoints/", "GET"): (200, 401, 401, 200, 200),
    ("api/v1/agreements/", "GET"): (200, 401, 401, 200, 200),
    ("api/v1/agreements/<int:pk>/", "GET"): (404, 401, 401, 200, 200),
    ("api/v1/agreements/<int:pk>/pdf/", "GET"): (404, 401, 401, 200, 200),
    ("api/v1/grants/", "GET"): (200, 401, 401, 200, 200),
    ("api/v1/access-requests/", "GET"): (200, 401, 401, 200, 200),
    ("api/v1/access-requests/", "POST"): (201, 401, 401, 403, 201),
    ("api/v1/access-requests/<int:pk>/", "GET"): (404, 401, 401, 200, 200),
    # Obligations: each partner lists its own (the outsider's list is empty), the auditor every partner's.
    ("api/v1/obligations/", "GET"): (200, 401, 401, 200, 200),
    ("api/v1/jobs/", "GET"): (200, 401, 401, 200, 200),
    ("api/v1/jobs/", "POST"): (403, 401, 401, 403, 202),
    ("api/v1/jobs/<int:pk>/", "GET"): (404, 401, 401, 200, 200),
    ("api/v1/jobs/<int:pk>/cancel/", "POST"): (404, 401, 401, 403, 200),
    # Findings: the outsider's POST cites the owner's job, which is 404 for it; the lab reads and never submits.
    ("api/v1/findings/", "GET"): (200, 401, 401, 200, 200),
    ("api/v1/findings/", "POST"): (404, 401, 401, 403, 201),
    ("api/v1/findings/<int:pk>/", "GET"): (404, 401, 401, 200, 200),
    ("api/v1/incidents/", "GET"): (200, 401, 401, 200, 200),
    ("api/v1/incidents/", "POST"): (201, 401, 401, 403, 201),
    ("api/v1/audit/events/", "GET"): (403, 401, 401, 200, 403),
    ("api/v1/audit/verify/", "GET"): (403, 401, 401, 200, 403),
    ("api/v1/records/verify/", "POST"): (200, 401, 401, 200, 200),
    # Anyone may ask whether a text came from here (a revoked token is still refused, not taken as anonymous);
    # what the answer discloses by caller is tested in tests/inference/test_provenance.py.
    ("api/v1/provenance/check/", "POST"): (200, 200, 401, 200, 200),
    # Stage reviews are the lab's: partners (the owner's researcher too) are told nothing of them.
    ("api/v1/stage-reviews/<slug:checkpoint>/", "GET"): (404, 401, 401, 200, 404),
    # Webhooks are for partner admins and lab admins only (tests/webhooks/test_api.py: admins and outsiders).
    ("api/v1/webhooks/", "GET"): (403, 401, 401, 403, 403),
    ("api/v1/webhooks/", "POST"): (403, 401, 401, 403, 403),
    ("api/v1/webhooks/<int:pk>/", "GET"): (403, 401, 401, 403, 403),
    ("api/v1/webhooks/<int:pk>/rotate-secret/", "POST"): (403, 401, 401, 403, 403),
    ("api/v1/webhooks/<int:pk>/deliveries/", "GET"): (403, 401, 401, 403, 403),
    ("api/v1/webhook-deliveries/<int:pk>/resend/", "POST"): (403, 401, 401, 403, 403),
}
OTHER_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
PUBLIC_ROUTES = {"api/v1/provenance/check/"}


def api_routes() -> dict[str, type]:
    """Every route under api/v1/ from the resolver, with its view class."""
    found: dict[str, type] = {}

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                route = prefix + str(pattern.pattern)
                if route.startswith("api/v1/"):
                    found[route] = pattern.callback.cls

    walk(get_resolver().url_patterns, "")
    return found


def methods_of(view: type) -> set[str]:
    return {m.upper() for m in ("get", "post", "put", "patch", "delete") if hasattr(view, m)}


def test_every_route_and_method_is_in_the_matrix():
    served = {(route, method) for route, view in api_routes().items() for method in methods_of(view)}
    assert served == set(MATRIX), f"missing from MATRIX: {served - set(MATRIX)}; stale: {set(MATRIX) - served}"


@dataclass
class World:
    clients: dict
    ids: dict  # the owner's objects, by path parameter use


@pytest.fixture
def world(researcher_a, researcher_b, auditor, active, gpt2, no_generation) -> World:
    own_key = token_for(researcher_a)
    revoked_key = token_for(researcher_a)
    AuthToken.objects.filter(token_key=revoked_key[:15]).delete()
    own = client_with(own_key)
    job = own.post("/api/v1/jobs/", job_body(), format="json").json()
    request = own.post(
        "/api/v1/access-requests/",
        {"checkpoints": ["gpt2-xl"], "purpose": "Measuring detectability of the largest model's samples."},
        format="json",
    ).json()
    finding = own.post("/api/v1/findings/", finding_body(job["id"]), format="json").json()
    own.post("/api/v1/incidents/", incident_body(), format="json")
    clients = {
        "own": own,
        "other": client_with(token_for(researcher_b)),
        "anonymous": client_with(None),
        "revoked": client_with(revoked_key),
        "auditor": client_with(token_for(auditor)),
    }
    return World(
        clients=clients,
        ids={
            "agreements": active.pk,
            "access-requests": request["id"],
            "jobs": job["id"],
            "findings": finding["id"],
        },
    )


def incident_body() -> dict:
    return {
        "title": "Samples posted as product reviews",
        "description": "A contractor posted gpt2 samples to a forum as if they were real reviews.",
        "discovered_at": (timezone.now() - timedelta(hours=2)).isoformat(),
        "severity": "medium",
        "checkpoints": ["gpt2"],
    }


def finding_body(job_id: int) -> dict:
    return {
        "title": "Headlines make gpt2 samples convincing",
        "category": "human_detection",
        "checkpoints": ["gpt2"],
        "summary": "Raters mistook gpt2 samples for news articles when the prompt was a headline.",
        "cited_jobs": [job_id],
    }


def owners_job_id() -> int:
    """The owner's job (the world's only one): the outsider citing it is refused as if it did not exist."""
    return GenerationJob.objects.get().pk


def concrete(route: str, world: World) -> str:
    resource = route.split("/")[2]
    return "/" + route.replace("<int:pk>", str(world.ids.get(resource, 0))).replace("<slug:checkpoint>", "gpt2")


def request_for(client, method: str, url: str, caller: str, record: bytes):
    if url.endswith("/records/verify/"):
        upload = SimpleUploadedFile("record.pdf", record, content_type="application/pdf")
        return client.post(url, {"file": upload}, format="multipart")
    if url.endswith("/access-requests/") and method == "POST":
        checkpoint = "gpt2-large" if caller == "own" else "gpt2-medium"
        body = {"checkpoints": [checkpoint], "purpose": "Studying bias in generated samples across prompts."}
        return client.post(url, body, format="json")
    if url.endswith("/jobs/") and method == "POST":
        return client.post(url, job_body(), format="json")
    if url.endswith("/findings/") and method == "POST":
        return client.post(url, finding_body(owners_job_id()), format="json")
    if url.endswith("/provenance/check/"):
        return client.post(url, {"text": "Was this paragraph written by a person or by GPT-2?"}, format="json")
    if url.endswith("/incidents/") and method == "POST":
        return client.post(url, incident_body(), format="json")
    return client.generic(method, url)


@pytest.mark.parametrize("route,method", sorted(MATRIX))
def test_each_caller_gets_the_expected_status(request, world, route, method):
    record = b"%PDF-1.7\nnot a record\n"
    if "pdf" in route or "records" in route:  # sealing renders a PDF: only where it matters
        record = record_file_bytes(request.getfixturevalue("sealed_record"))
    url = concrete(route, world)
    got = {}
    for caller in CALLERS:
        response = request_for(world.clients[caller], method, url, caller, record)
        got[caller] = response.status_code
        if response.status_code >= 400:
            error_of(response)  # one error shape, whoever asks
        elif url.endswith("/pdf/"):
            assert response["Content-Type"] == "application/pdf" and response.content == record
        elif url.endswith("/records/verify/"):
            assert response.json()["ok"] is True, response.json()
    assert got == dict(zip(CALLERS, MATRIX[(route, method)], strict=True))


@pytest.mark.parametrize("route", sorted({route for route, _ in MATRIX}))
def test_methods_a_route_does_not_serve_are_405(world, route):
    served = {method for r, method in MATRIX if r == route}
    url = concrete(route, world)
    for method in sorted(set(OTHER_METHODS) - served):
        response = world.clients["own"].generic(method, url)
        assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed", (method, url)
        # A public route tells anyone its methods; the others ask for credentials first.
        expected = 405 if route in PUBLIC_ROUTES else 401
        assert world.clients["anonymous"].generic(method, url).status_code == expected


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/agreements/",
        "/api/v1/grants/",
        "/api/v1/access-requests/",
        "/api/v1/obligations/",
        "/api/v1/jobs/",
        "/api/v1/findings/",
        "/api/v1/incidents/",
    ],
)
def test_lists_hold_nothing_of_another_organisation(world, url):
    mine = world.clients["own"].get(url).json()
    theirs = world.clients["other"].get(url).json()
    assert len(mine["results"]) >= 1, "the owner sees their own rows"
    assert {row["organization"] for row in theirs["results"]} <= {"Partner B"}


def test_unknown_api_paths_are_404_in_the_api_shape(world):
    response = world.clients["own"].get("/api/v1/nothing-here/")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    slashless = world.clients["own"].get("/api/v1/jobs")
    assert slashless.status_code == 404 and "/api/v1/jobs/" in error_of(slashless)["message"]
