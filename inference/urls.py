from django.urls import path

from inference import views

urlpatterns = [
    path("jobs/", views.job_list, name="job_list"),
    path("jobs/new/", views.job_create, name="job_create"),
    path("jobs/<int:pk>/", views.job_detail, name="job_detail"),
    path("jobs/<int:pk>/live/", views.job_live, name="job_live"),
    path("jobs/<int:pk>/cancel/", views.job_cancel, name="job_cancel"),
    path("provenance/", views.provenance_check, name="provenance_check"),
    path("checkpoints/<slug:slug>/status/", views.checkpoint_status, name="checkpoint_status"),
]
