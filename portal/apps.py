from django.apps import AppConfig


class PortalConfig(AppConfig):
    """The pages people land on (each persona's home) and the demo data."""

    name = "portal"
    default_auto_field = "django.db.models.BigAutoField"
