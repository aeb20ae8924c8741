from django.contrib import admin
from django.urls import include, path

from accounts import token_views
from config import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/", include("config.api_urls")),
    path("account/tokens/", token_views.token_list, name="api_token_list"),
    path("account/tokens/<str:key>/revoke/", token_views.token_revoke, name="api_token_revoke"),
    path("accounts/", include("allauth.urls")),
    path("", include("accounts.urls")),
    path("", include("audit.urls")),
    path("", include("agreements.urls")),
    path("", include("models_registry.urls")),
    path("", include("inference.urls")),
]

handler400 = "config.views.error_400"
handler403 = "config.views.error_403"
handler404 = "config.views.error_404"
handler500 = "config.views.error_500"
