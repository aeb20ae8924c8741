"""What an operator reads in the log: one line per refused or missing page, no traceback for them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from django.urls import reverse

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_page_is_logged_once_with_debug_on(tmp_path):
    env = {**os.environ, "MODELPACT_VAR_DIR": str(tmp_path), "DEBUG": "true"}
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"):
        env.pop(name, None)
    code = "from django.test import Client; print(Client(HTTP_HOST='127.0.0.1').get('/no-such-page/').status_code)"
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip().endswith("404"), result.stderr
    assert result.stderr.count("Not Found: /no-such-page/") == 1, result.stderr


def test_a_refused_page_is_logged_without_a_traceback(client, researcher_a, caplog):
    client.force_login(researcher_a)
    assert client.get(reverse("audit_event_list")).status_code == 403
    refusals = [r for r in caplog.records if r.name == "django.request" and "Forbidden" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].exc_info is None
