from django.urls import path

from agreements import views

urlpatterns = [
    path("templates/", views.template_list, name="template_list"),
    path("templates/new/", views.template_create, name="template_create"),
    path("templates/preview/", views.template_preview, name="template_preview"),
    path("templates/<int:pk>/", views.template_detail, name="template_detail"),
    path("templates/<int:pk>/new-draft/", views.template_new_draft, name="template_new_draft"),
    path("templates/<int:pk>/compare/", views.template_diff, name="template_diff"),
    path("templates/versions/<int:pk>/", views.template_version_detail, name="template_version"),
    path("templates/versions/<int:pk>/publish/", views.template_version_publish, name="template_version_publish"),
    path("templates/versions/<int:pk>/retire/", views.template_version_retire, name="template_version_retire"),
    path("agreements/", views.agreement_list, name="agreement_list"),
    path("agreements/new/", views.agreement_create, name="agreement_create"),
    path("agreements/<int:pk>/", views.agreement_detail, name="agreement_detail"),
    path("agreements/<int:pk>/edit/", views.agreement_edit, name="agreement_edit"),
    path("agreements/<int:pk>/send/", views.agreement_send, name="agreement_send"),
    path("agreements/<int:pk>/void/", views.agreement_void, name="agreement_void"),
    path("agreements/<int:pk>/terminate/", views.agreement_terminate, name="agreement_terminate"),
    path("agreements/<int:pk>/amend/", views.agreement_amend, name="agreement_amend"),
    path("agreements/<int:pk>/sign/", views.agreement_sign, name="agreement_sign"),
    path("agreements/<int:pk>/decline/", views.agreement_decline, name="agreement_decline"),
    path("checkpoints/", views.checkpoint_list, name="checkpoint_list"),
    path("checkpoints/<slug:slug>/", views.checkpoint_detail, name="checkpoint_detail"),
    path("access-requests/", views.access_request_list, name="access_request_list"),
    path("access-requests/new/", views.access_request_create, name="access_request_create"),
    path("access-requests/<int:pk>/", views.access_request_detail, name="access_request_detail"),
    path("access-requests/<int:pk>/withdraw/", views.access_request_withdraw, name="access_request_withdraw"),
    path("access-requests/<int:pk>/approve/", views.access_request_approve, name="access_request_approve"),
    path("access-requests/<int:pk>/reject/", views.access_request_reject, name="access_request_reject"),
]
