"""Queueing a task by its name.

Tasks call services (a task is a thin entry point), so services cannot import their own app's
tasks module without a circle. A service names the follow-up task instead: the name is looked up
in Celery's registry when it is sent, so a misspelt name fails at once (in every test that runs
the service) rather than leaving a message that no worker would ever take.
"""

from __future__ import annotations

from typing import Any

from celery import Task, current_app
from django.db import transaction


def task_send(name: str, *args: Any, **options: Any) -> None:
    """Send task `name` now, with apply_async's options (queue, time limits). Eager mode runs it here."""
    _task(name).apply_async(args=list(args), **options)


def task_send_on_commit(name: str, *args: Any, **options: Any) -> None:
    """Send task `name` once the current transaction commits: never for work that was rolled back."""
    transaction.on_commit(lambda: task_send(name, *args, **options))


def _task(name: str) -> Task:
    if name not in current_app.tasks:
        # Outside a worker, the apps' tasks modules are imported on first need (a worker imports them at start).
        current_app.loader.import_default_modules()
    return current_app.tasks[name]  # NotRegistered for a name no app defines
