from django.urls import path

from records import views

urlpatterns = [
    path("audit/", views.audit_event_list_page, name="audit_event_list"),
    path("audit/verify/", views.audit_chain_verify_page, name="audit_verify"),
    path("records/", views.records_home, name="records_home"),
    path("records/exports/bundle/", views.record_export_bundle, name="record_export_bundle"),
    path("records/exports/audit-log/", views.record_export_audit_log, name="record_export_audit_log"),
    path("records/<int:pk>/", views.record_detail, name="record_detail"),
    path("records/<int:pk>/status/", views.record_status, name="record_status"),
    path("records/<int:pk>/download/", views.record_download, name="record_download"),
    path("records/agreements/<int:pk>/", views.agreement_record_download, name="agreement_record"),
    path("records/agreements/<int:pk>/seal/", views.agreement_record_seal, name="agreement_record_seal"),
    path("records/release-decisions/<int:pk>/", views.stage_review_record_download, name="stage_review_record"),
    path("records/release-decisions/<int:pk>/seal/", views.stage_review_record_seal, name="stage_review_record_seal"),
    path("verify/", views.record_verify, name="record_verify"),
]
