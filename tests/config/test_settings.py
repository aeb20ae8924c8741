"""Settings come from the environment, parsed strictly: a bad value stops start-up naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "x" * 20 + "production-secret-key-that-is-long-and-random-0123456789",
    "ALLOWED_HOSTS": "modelpact.example",
    "DATABASE_URL": "postgres://modelpact@db.internal:5432/modelpact",
    "CELERY_BROKER_URL": "redis://redis.internal:6379/0",
    "REDIS_URL": "redis://redis.internal:6379/1",
    "EMAIL_URL": "smtp://mailer:secret@smtp.example:587",
    "WATERMARK_KEY": "lab-watermark-secret-0123456789abcdef",
}


def manage(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in PRODUCTION and k != "DJANGO_SETTINGS_MODULE"}
    clean["MODELPACT_VAR_DIR"] = str(tmp_path)
    clean.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DEBUG", "maybe"),
        ("DATABASE_URL", "mysql-ish://nowhere"),
        ("CELERY_BROKER_URL", "carrier-pigeon://"),
        ("EMAIL_URL", "fax://"),
        ("CELERY_TASK_TIME_LIMIT", "ten"),
        ("LOGIN_ATTEMPTS_LIMIT", "0"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(tmp_path, variable, value):
    result = manage("check", tmp_path=tmp_path, **{variable: value})
    assert result.returncode != 0
    assert variable in result.stderr
    assert "Traceback" not in result.stderr.splitlines()[-1]


def test_secret_key_is_required_when_debug_is_off(tmp_path):
    result = manage("check", tmp_path=tmp_path, DEBUG="false", ALLOWED_HOSTS="x.example")
    assert result.returncode != 0
    assert "SECRET_KEY is required" in result.stderr


def test_the_watermark_key_is_required_and_long_when_debug_is_off(tmp_path):
    production = {k: v for k, v in PRODUCTION.items() if k != "WATERMARK_KEY"}
    missing = manage("check", tmp_path=tmp_path, **production)
    assert missing.returncode != 0 and "WATERMARK_KEY is required" in missing.stderr
    short = manage("check", tmp_path=tmp_path, **production, WATERMARK_KEY="short")
    assert short.returncode != 0 and "WATERMARK_KEY must be at least 32 characters" in short.stderr
    assert "short" not in short.stderr.replace("WATERMARK_KEY must be at least", "")


def test_development_generates_a_secret_key_once(tmp_path):
    assert manage("check", tmp_path=tmp_path).returncode == 0
    key = (tmp_path / "secret_key").read_text()
    assert len(key) >= 50
    manage("check", tmp_path=tmp_path)
    assert (tmp_path / "secret_key").read_text() == key


def test_production_values_pass_check_deploy_without_a_warning(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", tmp_path=tmp_path, **PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert "WARNINGS" not in result.stderr + result.stdout
    assert "no issues" in result.stdout


def test_check_deploy_fails_without_a_shared_cache_naming_the_login_lock(tmp_path):
    without_redis = {k: v for k, v in PRODUCTION.items() if k != "REDIS_URL"}
    result = manage("check", "--deploy", tmp_path=tmp_path, **without_redis)
    assert result.returncode != 0
    assert "REDIS_URL" in result.stderr and "sign-in lock" in result.stderr


def test_check_deploy_warns_when_webhooks_may_reach_private_addresses(tmp_path):
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        tmp_path=tmp_path,
        **PRODUCTION,
        WEBHOOKS_ALLOW_PRIVATE_TARGETS="true",
    )
    assert result.returncode != 0
    assert "modelpact.W001" in result.stderr and "cloud metadata" in result.stderr


def test_seed_demo_refuses_with_debug_off_unless_told_what_it_does(tmp_path):
    env = {
        "DEBUG": "false",
        "SECRET_KEY": PRODUCTION["SECRET_KEY"],
        "WATERMARK_KEY": PRODUCTION["WATERMARK_KEY"],
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
    }
    manage("migrate", "--noinput", "-v0", tmp_path=tmp_path, **env)
    refused = manage("seed_demo", tmp_path=tmp_path, **env)
    assert refused.returncode != 0
    assert "DEBUG off" in refused.stderr and "--create-demo-logins-with-debug-off" in refused.stderr
    users = manage(
        "shell", "-c", "from accounts.models import User; print(User.objects.count())", tmp_path=tmp_path, **env
    )
    assert users.stdout.strip().splitlines()[-1] == "0", "nothing was created"
