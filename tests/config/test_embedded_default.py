"""The one-machine default (SQLite + kombu's filesystem broker) runs a real worker end to end."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.worker


def embedded_env(var_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env["MODELPACT_VAR_DIR"] = str(var_dir)
    return env


def test_a_worker_on_sqlite_and_the_filesystem_broker_runs_a_task(tmp_path):
    env = embedded_env(tmp_path)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True, timeout=180)
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,gpu", "--pool", "solo",
             "--hostname", "smoke@%h", "--loglevel", "INFO"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        subprocess.run(
            [*manage, "shell", "-c",
             "from core.tasks import task_send; task_send('agreements.tasks.revoke_expired_grants')"],
            cwd=ROOT, env=env, check=True, timeout=60,
        )  # fmt: skip
        done = re.compile(r"Task agreements\.tasks\.revoke_expired_grants\[[-0-9a-f]+\] succeeded")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not done.search(log.read_text()):
            time.sleep(0.2)
        assert done.search(log.read_text()), f"the worker never ran the task:\n{log.read_text()[-3000:]}"
        assert list((tmp_path / "broker" / "queue").iterdir()) == []  # acknowledged, nothing left behind
        assert (tmp_path / "modelpact.sqlite3").exists()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()


def test_make_runs_setup_migrates_and_seeds_the_demo_on_sqlite(tmp_path):
    """What `make run` does before starting the processes, on the one-machine default."""
    env = embedded_env(tmp_path)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True, timeout=180)
    seeded = subprocess.run([*manage, "seed_demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    assert "researcher@partner-a.example" in seeded.stdout
    check = "from agreements.models import Agreement; print(Agreement.objects.filter(status='active').count())"
    active = subprocess.run(
        [*manage, "shell", "-c", check], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert int(active.stdout.strip().splitlines()[-1]) >= 1, active.stderr
