from django.urls import path

from audit import views

urlpatterns = [
    path("audit/", views.audit_event_list_view, name="audit_event_list"),
    path("audit/verify/", views.audit_verify_view, name="audit_verify"),
]
