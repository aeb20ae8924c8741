"""Pages for findings, incidents and stage reviews."""

from django.urls import path

from research.views import findings as finding_views
from research.views import incidents as incident_views
from research.views import releases as release_views

urlpatterns: list = [
    # --- findings ---
    path("findings/", finding_views.finding_list, name="finding_list"),
    path("findings/new/", finding_views.finding_create, name="finding_create"),
    path("findings/<int:pk>/", finding_views.finding_detail, name="finding_detail"),
    path("findings/<int:pk>/review/", finding_views.finding_review, name="finding_review"),
    path(
        "findings/<int:pk>/publication-review/",
        finding_views.finding_publication_review,
        name="finding_publication_review",
    ),
    path("findings/<int:pk>/revise/", finding_views.finding_revise, name="finding_revise"),
    path(
        "findings/<int:pk>/attachments/<int:attachment_pk>/",
        finding_views.finding_attachment_download,
        name="finding_attachment_download",
    ),
    # --- end findings ---
    # --- incidents ---
    path("incidents/", incident_views.incident_list, name="incident_list"),
    path("incidents/new/", incident_views.incident_create, name="incident_create"),
    path("incidents/<int:pk>/", incident_views.incident_detail, name="incident_detail"),
    path("incidents/<int:pk>/act/", incident_views.incident_act, name="incident_act"),
    path("incidents/<int:pk>/resolve/", incident_views.incident_resolve, name="incident_resolve"),
    # --- end incidents ---
    # --- releases ---
    path("stage-reviews/", release_views.stage_review_index, name="stage_review_index"),
    path("checkpoints/<slug:slug>/stage-review/", release_views.stage_review, name="stage_review"),
    path("checkpoints/<slug:slug>/stage-review/decide/", release_views.stage_review_decide, name="stage_review_decide"),
    path(
        "checkpoints/<slug:slug>/stage-review/usage.csv",
        release_views.stage_review_usage_csv,
        name="stage_review_usage_csv",
    ),
    # --- end releases ---
]
