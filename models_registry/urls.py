from django.urls import path

from models_registry import views

urlpatterns = [
    path("checkpoints/", views.checkpoint_list, name="checkpoint_list"),
    path("checkpoints/<slug:slug>/", views.checkpoint_detail, name="checkpoint_detail"),
    path("checkpoints/<slug:slug>/status/", views.checkpoint_status, name="checkpoint_status"),
    path("access-requests/", views.access_request_list, name="access_request_list"),
    path("access-requests/new/", views.access_request_create, name="access_request_create"),
    path("access-requests/<int:pk>/", views.access_request_detail, name="access_request_detail"),
    path("access-requests/<int:pk>/withdraw/", views.access_request_withdraw, name="access_request_withdraw"),
    path("access-requests/<int:pk>/approve/", views.access_request_approve, name="access_request_approve"),
    path("access-requests/<int:pk>/reject/", views.access_request_reject, name="access_request_reject"),
]
