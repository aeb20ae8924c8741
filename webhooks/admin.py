from django.contrib import admin

from webhooks.models import Delivery, WebhookEndpoint, WebhookEvent


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin[WebhookEndpoint]):
    list_display = ["url", "organization", "owner_organization", "status", "created_at"]
    exclude = ["secret_encrypted", "previous_secret_encrypted"]  # never shown, even encrypted


@admin.register(WebhookEvent)
class WebhookEventAdmin(admin.ModelAdmin[WebhookEvent]):
    list_display = ["id", "type", "organization", "created_at"]


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin[Delivery]):
    list_display = ["event", "endpoint", "status", "attempts", "last_status_code", "next_attempt_at"]
