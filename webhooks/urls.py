from django.urls import path

from webhooks import views

urlpatterns = [
    path("webhooks/", views.webhook_list, name="webhook_list"),
    path("webhooks/<int:pk>/", views.webhook_detail, name="webhook_detail"),
    path("webhooks/<int:pk>/rotate-secret/", views.webhook_rotate_secret, name="webhook_rotate_secret"),
    path("webhooks/<int:pk>/enable/", views.webhook_enable, name="webhook_enable"),
    path("webhooks/deliveries/<int:pk>/resend/", views.delivery_resend, name="webhook_delivery_resend"),
]
