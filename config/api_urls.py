"""The partner REST API (v1), its OpenAPI schema and its docs. Included at /api/ by config/urls.py."""

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from agreements.api import (
    AccessRequestDetailApi,
    AccessRequestListCreateApi,
    AgreementDetailApi,
    AgreementListApi,
    CheckpointListApi,
    GrantListApi,
    ObligationListApi,
)
from core.api import not_found
from inference.api import JobCancelApi, JobDetailApi, JobListCreateApi, ProvenanceCheckApi
from records.api import AgreementPdfApi, AuditEventListApi, AuditVerifyApi, RecordVerifyApi
from research.api.findings import FindingDetailApi, FindingListCreateApi
from research.api.incidents import IncidentListCreateApi
from research.api.releases import StageReviewApi
from webhooks.api import (
    DeliveryResendApi,
    WebhookDeliveryListApi,
    WebhookDetailApi,
    WebhookListCreateApi,
    WebhookRotateSecretApi,
)

app_name = "api"

v1 = [
    path("checkpoints/", CheckpointListApi.as_view(), name="checkpoint-list"),
    path("agreements/", AgreementListApi.as_view(), name="agreement-list"),
    path("agreements/<int:pk>/", AgreementDetailApi.as_view(), name="agreement-detail"),
    path("agreements/<int:pk>/pdf/", AgreementPdfApi.as_view(), name="agreement-pdf"),
    path("grants/", GrantListApi.as_view(), name="grant-list"),
    path("access-requests/", AccessRequestListCreateApi.as_view(), name="access-request-list"),
    path("access-requests/<int:pk>/", AccessRequestDetailApi.as_view(), name="access-request-detail"),
    path("obligations/", ObligationListApi.as_view(), name="obligation-list"),
    path("jobs/", JobListCreateApi.as_view(), name="job-list"),
    path("jobs/<int:pk>/", JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<int:pk>/cancel/", JobCancelApi.as_view(), name="job-cancel"),
    path("provenance/check/", ProvenanceCheckApi.as_view(), name="provenance-check"),
    path("findings/", FindingListCreateApi.as_view(), name="finding-list"),
    path("findings/<int:pk>/", FindingDetailApi.as_view(), name="finding-detail"),
    path("incidents/", IncidentListCreateApi.as_view(), name="incident-list"),
    path("stage-reviews/<slug:checkpoint>/", StageReviewApi.as_view(), name="stage-review-detail"),
    path("audit/events/", AuditEventListApi.as_view(), name="audit-event-list"),
    path("audit/verify/", AuditVerifyApi.as_view(), name="audit-verify"),
    path("records/verify/", RecordVerifyApi.as_view(), name="record-verify"),
    path("webhooks/", WebhookListCreateApi.as_view(), name="webhook-list"),
    path("webhooks/<int:pk>/", WebhookDetailApi.as_view(), name="webhook-detail"),
    path("webhooks/<int:pk>/rotate-secret/", WebhookRotateSecretApi.as_view(), name="webhook-rotate-secret"),
    path("webhooks/<int:pk>/deliveries/", WebhookDeliveryListApi.as_view(), name="webhook-delivery-list"),
    path("webhook-deliveries/<int:pk>/resend/", DeliveryResendApi.as_view(), name="webhook-delivery-resend"),
]

urlpatterns = [
    path("v1/", include(v1)),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves Swagger UI's start-up script from its own URL (?script): no inline script.
    path(
        "docs/",
        SpectacularSwaggerSplitView.as_view(url_name="api:schema", template_name="api/swagger_ui.html"),
        name="docs",
    ),
    re_path(r"^[\s\S]*$", not_found, name="not-found"),  # any path, newlines included
]
