from django.contrib import admin
from django.urls import include, path

from config import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/", include("config.api_urls")),
    path("accounts/", include("allauth.urls")),
    path("", include("portal.urls")),
    path("", include("accounts.urls")),
    path("", include("records.urls")),
    path("", include("agreements.urls")),
    path("", include("inference.urls")),
    path("", include("research.urls")),
    path("", include("webhooks.urls")),
]

handler400 = "config.views.error_400"
handler403 = "config.views.error_403"
handler404 = "config.views.error_404"
handler500 = "config.views.error_500"
