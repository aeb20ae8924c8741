from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.db.models.signals import post_migrate

from core.db_roles import app_role_grant


class CoreConfig(AppConfig):
    """Plumbing every app stands on: HTTP security headers, database roles, shared helpers."""

    name = "core"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from core import checks  # noqa: F401  (registers the deploy checks)

        post_migrate.connect(grant_app_role_after_migrate, dispatch_uid="core.grant_app_role_after_migrate")


def grant_app_role_after_migrate(sender: AppConfig, using: str = "default", verbosity: int = 1, **kwargs: Any) -> None:
    """With DATABASE_APP_ROLE set, `migrate` (run as the owner) grants the app's role its privileges.

    post_migrate is sent once per app after all migrations ran; the grants need every table, and
    once is enough, so they run for the last app only.
    """
    role = getattr(settings, "DATABASE_APP_ROLE", "")
    if not role:
        return
    last = [config for config in apps.get_app_configs() if config.models_module is not None][-1]
    if sender is not last:
        return
    report = app_role_grant(role, using=using)
    stdout = kwargs.get("stdout")
    if verbosity >= 1 and stdout is not None:
        stdout.write(f"  Granted the app role {role} its privileges on {report.tables} tables ({report.schema}).")
