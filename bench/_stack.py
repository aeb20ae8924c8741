"""A throwaway ModelPact stack for benchmarks that go through the real queue and worker.

PostgreSQL database (created, migrated, seeded with the demo organisations, agreements and
checkpoints; dropped at the end), a flushed Redis database as the broker, a temporary folder for
the var dir and weights, and real Celery worker processes started as production starts them,
with DEBUG off (Django then records no query in memory, as in production).

Environment (defaults in brackets): BENCH_PG_URL [postgres://postgres:postgres@127.0.0.1:5432],
BENCH_BROKER_URL [redis://127.0.0.1:6379/9; flushed first and last].
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Stack:
    def __init__(self, *, db_name: str, prefix: str) -> None:
        self.server = os.environ.get("BENCH_PG_URL", "postgres://postgres:postgres@127.0.0.1:5432").rstrip("/")
        self.db_name = db_name
        self.broker = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/9")
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix))
        self.timings: dict[str, float] = {}
        self.workers: list[subprocess.Popen] = []
        os.environ.update(
            {
                "DATABASE_URL": f"{self.server}/{db_name}",
                "CELERY_BROKER_URL": self.broker,
                "MODELPACT_VAR_DIR": str(self.tmp / "var"),
                "DJANGO_SETTINGS_MODULE": "config.settings",
                "SECRET_KEY": secrets.token_urlsafe(48),
                "DEBUG": "false",
                "WATERMARK_KEY": secrets.token_urlsafe(48),  # required with DEBUG off, as in production
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "CELERY_TASK_ALWAYS_EAGER": "false",
                "LOG_LEVEL": "WARNING",
            }
        )

    # --- database and broker -------------------------------------------------------------------

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"{self.server}/postgres", autocommit=True) as conn:
            conn.execute(sql)

    def flush_broker(self) -> None:
        import redis

        redis.Redis.from_url(self.broker).flushdb()

    def setup(self) -> None:
        """Create, migrate and seed the database; Django is set up in this process afterwards."""
        self._admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        self._admin(f'CREATE DATABASE "{self.db_name}"')
        self.flush_broker()
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT, env={**os.environ}, check=True, stdout=sys.stderr,
        )  # fmt: skip
        self.timings["migrate_s"] = round(time.perf_counter() - t, 1)

        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        # The demo logins need no production-strength password hashing to be benchmarked.
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
        t = time.perf_counter()
        # A throwaway database: the demo logins get a random password nobody needs.
        call_command(
            "seed_demo", create_demo_logins_with_debug_off=True, password=secrets.token_urlsafe(16), stdout=sys.stderr
        )
        self.timings["seed_demo_s"] = round(time.perf_counter() - t, 1)
        self.flush_broker()  # seeding queued notification emails; no worker here consumes them

        from config.celery import app

        app.conf.task_always_eager = False

    def teardown(self, *, keep: bool = False) -> None:
        for worker in list(self.workers):
            self.stop_worker(worker)
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if keep:
            return
        with contextlib.suppress(Exception):
            self._admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        with contextlib.suppress(Exception):
            self.flush_broker()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- workers -------------------------------------------------------------------------------

    def start_worker(
        self, *, env: dict[str, str], log: Path, queues: str = "gpu", pool: str = "prefork"
    ) -> subprocess.Popen:
        """`celery -A config worker --pool prefork --concurrency 1`, as production runs a GPU worker."""
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues,
             "--pool", pool, *(["--concurrency", "1"] if pool == "prefork" else []),
             "--hostname", f"bench-{len(self.workers)}@%h", "--loglevel", "WARNING"],
            cwd=ROOT, env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the pool child goes with it
        )  # fmt: skip
        self.workers.append(worker)
        return worker

    def stop_worker(self, worker: subprocess.Popen, *, grace_s: float = 10.0) -> None:
        """Warm shutdown (SIGTERM), then the worker's own process group is killed if it lingers."""
        if worker in self.workers:
            self.workers.remove(worker)
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.pid, signal.SIGKILL)  # a pool child left behind by the warm shutdown
