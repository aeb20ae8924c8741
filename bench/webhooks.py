"""Webhooks benchmark: audited changes -> signed deliveries at a local receiver, through Redis and a real worker.

Self-contained: creates a PostgreSQL database (dropped at the end), migrates it, creates the lab and
its admin through the account services, flushes a Redis database (DB 10 by default: the queue and
API benchmarks use 9 and 8), and starts a real worker process (`celery -A config worker --queues
default --pool prefork`, as in production) and `celery -A config beat` (whose sweep_deliveries sends
due retries). A small threaded HTTP server on 127.0.0.1 in this process is the receiver: it verifies
nothing and records each request's arrival time and webhook-id header. The lab admin registers it as
a lab endpoint for checkpoint.embargoed (private targets allowed), then every event is made the
product's way: checkpoint_embargo (audited; the audit subscriber records the webhook event and its
delivery and queues the task on commit) and checkpoint_restore, on a checkpoint nobody holds.

1. `--events` events, made one after another as fast as the services allow: event-to-delivery
   latency (WebhookEvent.created_at -> arrival at the receiver) p50/p95, deliveries per second,
   every event delivered once by webhook-id (redeliveries counted, not hidden).
2. The receiver goes down (its socket closed: connections are refused) for `--down-seconds`, while
   `--down-events` events are made, spread over the outage. Then it comes back. With `--recovery
   backoff` (default) nothing is nudged: the failed attempts wait out their backoff (10 s, doubling)
   and the beat's sweep (every WEBHOOKS_SWEEP_SECONDS, 15 s) queues them again. With `--recovery
   resend` the lab admin resends each waiting delivery (services.delivery_resend, as from the
   delivery log) the moment the receiver is back. Reports whether all arrived and how long after
   the receiver came back the last one did.

Prints one JSON object: figures, targets (all delivered, none lost after the outage) and `pass`.

    .venv/bin/python bench/webhooks.py [--events 1000] [--down-seconds 60] [--down-events 100] [--concurrency 2]
                                       [--recovery backoff|resend] [--wait-s 300]

Environment (defaults in brackets): BENCH_PG_URL [postgres://postgres:postgres@127.0.0.1:5432],
BENCH_DB_NAME [mp_bench_webhooks], BENCH_BROKER_URL [redis://127.0.0.1:6379/10; flushed first and last].
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
# Run as `python bench/webhooks.py`, sys.path[0] is bench/, where queue.py would shadow the stdlib
# `queue` module that Celery, kombu and urllib3 import (and this file the `webhooks` app). Drop it.
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

from bench._common import emit, machine_info, stdout_to_stderr, summary  # noqa: E402

CHECKPOINT = "gpt2-xl"  # no agreement grants it here: an embargo tells nobody, only the webhook
EVENT_TYPE = "checkpoint.embargoed"
POLL_S = 0.05


def _database(server: str, name: str, *, create: bool) -> None:
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            conn.execute(f'CREATE DATABASE "{name}"')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Receiver:
    """A threaded HTTP server on 127.0.0.1 that answers 200 and records (arrival time, webhook-id)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.arrivals: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                arrived = time.time()
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.arrivals.append((arrived, self.headers.get("webhook-id", "")))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Down: the listening socket is closed, so a connection is refused at once."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def received(self) -> list[tuple[float, str]]:
        with self.lock:
            return list(self.arrivals)


def _wait_for(receiver: Receiver, ids: set[str], timeout: float) -> float | None:
    """Seconds until every id arrived, or None at the timeout."""
    started = time.time()
    while time.time() - started < timeout:
        if ids <= {wid for _, wid in receiver.received()}:
            return time.time() - started
        time.sleep(POLL_S)
    return None


def _stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="events delivered to a receiver that is up")
    parser.add_argument("--down-seconds", type=float, default=60, help="how long the receiver is down")
    parser.add_argument("--down-events", type=int, default=100, help="events made while it is down")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (prefork)")
    parser.add_argument(
        "--recovery",
        choices=["backoff", "resend"],
        default="backoff",
        help="after the outage: the natural backoff and the beat sweep, or delivery_resend for each waiting one",
    )
    parser.add_argument("--wait-s", type=float, default=300, help="longest wait for deliveries, per phase")
    parser.add_argument("--keep", action="store_true", help="keep the database and temp folder (debugging)")
    args = parser.parse_args()
    started = time.perf_counter()

    server = os.environ.get("BENCH_PG_URL", "postgres://postgres:postgres@127.0.0.1:5432").rstrip("/")
    db_name = os.environ.get("BENCH_DB_NAME", "mp_bench_webhooks")
    broker = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/10")
    tmp = Path(tempfile.mkdtemp(prefix="mp-bench-webhooks-"))
    env = {
        "DATABASE_URL": f"{server}/{db_name}",
        "CELERY_BROKER_URL": broker,
        "MODELPACT_VAR_DIR": str(tmp / "var"),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "WATERMARK_KEY": secrets.token_urlsafe(48),  # required with DEBUG off, as in production
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "LOG_LEVEL": "WARNING",
        "WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true",  # the receiver is on 127.0.0.1
    }
    os.environ.update(env)
    worker: subprocess.Popen | None = None
    beat: subprocess.Popen | None = None
    worker_log = tmp / "worker.log"
    beat_log = tmp / "beat.log"
    receiver = Receiver(_free_port())
    out: dict = {
        "benchmark": "webhooks",
        "worker": f"celery prefork, concurrency {args.concurrency}, queue default; celery beat",
        "recovery": args.recovery,
    }
    phase = "setup"
    try:
        with stdout_to_stderr():
            import redis

            _database(server, db_name, create=True)
            redis.Redis.from_url(broker).flushdb()
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
                cwd=_ROOT, env={**os.environ}, check=True, stdout=sys.stderr,
            )  # fmt: skip
            migrate_s = time.perf_counter() - t

            import django

            django.setup()
            from django.conf import settings
            from django.test import override_settings

            from accounts import services as accounts
            from accounts.models import Organization, Role
            from config.celery import app
            from models_registry import services as registry
            from models_registry.models import Checkpoint
            from webhooks import services as webhooks
            from webhooks.models import Delivery, WebhookEvent

            app.conf.task_always_eager = False
            lab = accounts.organization_create(
                actor=None, name="The Lab", legal_name="Open Model Lab Ltd", kind=Organization.Kind.LAB
            )
            admin = accounts.user_create(
                actor=None, organization=lab, email="admin@lab.example", role=Role.LAB_ADMIN, password=None
            )
            checkpoint = Checkpoint.objects.get(slug=CHECKPOINT)
            receiver.start()
            # http:// receivers are registered only with DEBUG on; the worker sends with it off.
            with override_settings(DEBUG=True):
                endpoint, _secret = webhooks.endpoint_create(actor=admin, url=receiver.url, events=[EVENT_TYPE])
            redis.Redis.from_url(broker).flushdb()  # nothing queued by the set-up is ours to time

            phase = "worker"
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "worker", "--queues", "default",
                 "--pool", "prefork", "--concurrency", str(args.concurrency),
                 "--hostname", "bench-webhooks@%h", "--loglevel", "WARNING"],
                cwd=_ROOT, env={**os.environ}, stdout=worker_log.open("w"), stderr=subprocess.STDOUT,
            )  # fmt: skip
            beat = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel", "WARNING",
                 "--schedule", str(tmp / "celerybeat-schedule")],
                cwd=_ROOT, env={**os.environ}, stdout=beat_log.open("w"), stderr=subprocess.STDOUT,
            )  # fmt: skip

            def make_event() -> str:
                """One audited embargo (the webhook event, its delivery, the task on commit); then restore."""
                registry.checkpoint_embargo(actor=admin, checkpoint=checkpoint, reason="Benchmark")
                registry.checkpoint_restore(actor=admin, checkpoint=checkpoint)
                return WebhookEvent.objects.filter(type=EVENT_TYPE).latest("created_at").message_id

            # Warm-up: the worker starts, imports and connects; one event must arrive before timing.
            t = time.perf_counter()
            warm_id = make_event()
            if _wait_for(receiver, {warm_id}, timeout=180) is None:
                raise RuntimeError(f"the warm-up event never arrived; see {worker_log}")
            worker_ready_s = time.perf_counter() - t

            # --- 1. The receiver is up -----------------------------------------------------------
            phase = "up"
            make_s: list[float] = []
            ids: list[str] = []
            t_first = time.time()
            for _ in range(args.events):
                t0 = time.perf_counter()
                ids.append(make_event())
                make_s.append(time.perf_counter() - t0)
            t_made = time.time()
            waited = _wait_for(receiver, set(ids), timeout=args.wait_s)
            time.sleep(1.0)  # a late redelivery would land here
            created = dict(
                (f"msg_{pk.hex}", at.timestamp())
                for pk, at in WebhookEvent.objects.filter(type=EVENT_TYPE).values_list("id", "created_at")
            )
            arrivals = receiver.received()
            first_arrival: dict[str, float] = {}
            for at, wid in arrivals:
                first_arrival.setdefault(wid, at)
            wanted = set(ids)
            counts = Counter(wid for _, wid in arrivals if wid in wanted)
            delivered = [wid for wid in ids if wid in first_arrival]
            latency = [first_arrival[wid] - created[wid] for wid in delivered]
            last_arrival = max((first_arrival[wid] for wid in delivered), default=t_first)
            up = {
                "events": args.events,
                "delivered": len(delivered),
                "lost": args.events - len(delivered),
                "redelivered_ids": sum(1 for n in counts.values() if n > 1),
                "extra_requests": sum(n - 1 for n in counts.values() if n > 1),
                "latency_s": summary(latency) if latency else None,
                "deliveries_per_s": round(len(delivered) / (last_arrival - t_first), 1) if delivered else 0.0,
                "events_made_per_s": round(args.events / (t_made - t_first), 1),
                "make_event_s": summary(make_s),
                "all_arrived_after_last_event_s": round(waited, 2) if waited is not None else None,
                "note": (
                    "latency: WebhookEvent.created_at (inside the audited change) -> arrival at the receiver; "
                    "deliveries/s: first event made -> last first arrival. Events are made one at a time, so "
                    "when deliveries/s equals events made/s the workers kept up and the producer set the pace"
                ),
            }

            # --- 2. The receiver is down, then back ----------------------------------------------
            phase = "outage"
            receiver.stop()
            down_at = time.time()
            down_ids: list[str] = []
            for n in range(args.down_events):
                # Spread over the outage, so the last ones are made just before the receiver is back.
                due = down_at + args.down_seconds * n / max(1, args.down_events)
                time.sleep(max(0.0, due - time.time()))
                down_ids.append(make_event())
            time.sleep(max(0.0, down_at + args.down_seconds - time.time()))
            receiver.start()
            back_at = time.time()
            phase = "recovery"
            resent = 0
            if args.recovery == "resend":
                for delivery in Delivery.objects.filter(endpoint=endpoint, status=Delivery.Status.PENDING):
                    with contextlib.suppress(Exception):  # one being sent right now says so; it needs no resend
                        webhooks.delivery_resend(actor=admin, delivery=delivery)
                        resent += 1
            waited_down = _wait_for(receiver, set(down_ids), timeout=args.wait_s + args.down_seconds)
            time.sleep(1.0)
            arrivals = receiver.received()
            down_first: dict[str, float] = {}
            for at, wid in arrivals:
                down_first.setdefault(wid, at)
            down_wanted = set(down_ids)
            down_counts = Counter(wid for _, wid in arrivals if wid in down_wanted)
            down_delivered = [wid for wid in down_ids if wid in down_first]
            event_pks = [uuid.UUID(hex=wid.removeprefix("msg_")) for wid in down_ids]
            rows = list(Delivery.objects.filter(event_id__in=event_pks).values_list("attempts", "status"))
            down = {
                "down_seconds": args.down_seconds,
                "events": args.down_events,
                "delivered": len(down_delivered),
                "lost": args.down_events - len(down_delivered),
                "redelivered_ids": sum(1 for n in down_counts.values() if n > 1),
                "last_arrival_after_back_up_s": (
                    round(max(down_first[w] for w in down_delivered) - back_at, 2) if down_delivered else None
                ),
                "first_arrival_after_back_up_s": (
                    round(min(down_first[w] for w in down_delivered) - back_at, 2) if down_delivered else None
                ),
                "attempts_per_delivery": dict(sorted(Counter(a for a, _ in rows).items())),
                "statuses": dict(Counter(s for _, s in rows)),
                "recovery": (
                    f"natural backoff ({settings.WEBHOOKS_RETRY_BASE_SECONDS} s, doubling); the beat's "
                    f"sweep_deliveries every {settings.WEBHOOKS_SWEEP_SECONDS:g} s queues what is due"
                    if args.recovery == "backoff"
                    else f"services.delivery_resend by the lab admin for each waiting delivery ({resent} resent)"
                ),
                "timed_out": waited_down is None,
            }

        targets = {
            "all_delivered_while_up": up["lost"] == 0,
            "none_lost_after_outage": down["lost"] == 0,
        }
        out.update(
            {
                "receiver": f"ThreadingHTTPServer on {receiver.url}",
                "event": f"{EVENT_TYPE} (checkpoint_embargo + checkpoint_restore on {CHECKPOINT})",
                "up": up,
                "outage": down,
                "targets": targets,
                "target": "every event delivered while up; none lost after the outage (latency and rate reported)",
                "pass": all(targets.values()),
                "setup_s": {"migrate": round(migrate_s, 1), "worker_start_and_first_event": round(worker_ready_s, 1)},
            }
        )
    except Exception as exc:  # report, then clean up; a benchmark that dies silently helps no one
        import traceback

        traceback.print_exc()
        out.update({"error": f"{type(exc).__name__}: {exc}", "phase": phase, "pass": False})
        if worker_log.exists():
            out["worker_log_tail"] = worker_log.read_text(errors="replace")[-2000:]
    finally:
        _stop(beat)
        _stop(worker)
        receiver.stop()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if not args.keep:
            with contextlib.suppress(Exception):
                _database(server, db_name, create=False)
            with contextlib.suppress(Exception):
                import redis

                redis.Redis.from_url(broker).flushdb()
            shutil.rmtree(tmp, ignore_errors=True)
    out["machine"] = machine_info("cpu")
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    emit(out)


if __name__ == "__main__":
    main()
