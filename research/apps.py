from django.apps import AppConfig


class ResearchConfig(AppConfig):
    """What partners learn and report (findings, incidents) and the lab's release decisions they inform."""

    name = "research"
    default_auto_field = "django.db.models.BigAutoField"
