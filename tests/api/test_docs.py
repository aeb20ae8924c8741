"""The OpenAPI schema and the interactive docs, which must work with no internet."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders

pytestmark = pytest.mark.django_db


def test_the_schema_is_openapi_3_and_lists_every_endpoint(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {
        "/api/v1/checkpoints/",
        "/api/v1/agreements/",
        "/api/v1/agreements/{id}/",
        "/api/v1/agreements/{id}/pdf/",
        "/api/v1/grants/",
        "/api/v1/access-requests/",
        "/api/v1/access-requests/{id}/",
        "/api/v1/obligations/",
        "/api/v1/jobs/",
        "/api/v1/jobs/{id}/",
        "/api/v1/jobs/{id}/cancel/",
        "/api/v1/findings/",
        "/api/v1/findings/{id}/",
        "/api/v1/incidents/",
        "/api/v1/stage-reviews/{checkpoint}/",
        "/api/v1/audit/events/",
        "/api/v1/audit/verify/",
        "/api/v1/records/verify/",
        "/api/v1/provenance/check/",
        "/api/v1/webhooks/",
        "/api/v1/webhooks/{id}/",
        "/api/v1/webhooks/{id}/rotate-secret/",
        "/api/v1/webhooks/{id}/deliveries/",
        "/api/v1/webhook-deliveries/{id}/resend/",
    }
    post_job = schema["paths"]["/api/v1/jobs/"]["post"]
    assert {"202", "403", "409", "429"} <= set(post_job["responses"])
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in post_job["parameters"])


def test_the_docs_load_their_scripts_from_our_own_static_files(client):
    page = client.get("/api/docs/").content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets, page
    for asset in assets:
        assert not asset.startswith(("http:", "https:", "//")), f"{asset} would need the internet"
        if asset.startswith("/static/"):
            assert finders.find(asset.removeprefix("/static/")), f"{asset} is not in the static files"
    assert "/api/schema/" in client.get("/api/docs/?script=").content.decode()
