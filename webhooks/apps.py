from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    """Outgoing webhooks: endpoints, events made from audit events, signed deliveries with retries."""

    name = "webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Here, not at the top: webhooks.events imports models, which load only once the apps are ready.
        from audit import hooks
        from webhooks.events import events_from_audit

        hooks.subscribe(events_from_audit)
