"""Generation through real Redis and a real Celery worker process: the behaviour users depend on."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection, transaction

from agreements.selectors import tokens_charged_today
from audit.selectors import audit_chain_verify
from inference import engine, provenance, services
from inference.models import GenerationJob, Sample
from inference.worker import job_request
from tests.inference.test_services import params

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("real_broker")]
FINISHED = {"succeeded", "failed", "cancelled"}


class Worker:
    """A Celery worker on the test database, in one process (solo pool) so a SIGKILL stops generation at once,
    as a host failure would. The prefork pool production uses is exercised by tests/deploy."""

    def __init__(self, tmp_path: Path, step_seconds: float = 0.0) -> None:
        self.step_seconds = step_seconds
        db = connection.settings_dict
        self.env = {
            **os.environ,
            "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            "MODELPACT_VAR_DIR": str(tmp_path),
            "INFERENCE_LEASE_SECONDS": "3",
            "INFERENCE_PROGRESS_INTERVAL": "0.2",
        }
        self.process: subprocess.Popen | None = None
        self.log = tmp_path / "worker.log"
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        # With step_seconds, the engine's per-step hook paces decoding like a real GPT-2 on a CPU:
        # the tiny demo checkpoint would otherwise end a job before another could arrive.
        pace = f"engine._fault_injector = lambda step: time.sleep({self.step_seconds}); " if self.step_seconds else ""
        launch = (
            f"import sys, time; from inference import engine; {pace}"
            "from celery.__main__ import main; sys.argv[0] = 'celery'; main()"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", launch, "-A", "config", "worker", "--queues", "default,gpu",
             "--pool", "solo", "--hostname", f"test{self.starts}@%h", "--loglevel", "INFO"],
            cwd=ROOT, env=self.env, stdout=self.log.open("a"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def worker(tmp_path):
    w = Worker(tmp_path)
    yield w
    w.stop()


@pytest.fixture
def paced_worker(tmp_path):
    w = Worker(tmp_path, step_seconds=0.01)
    yield w
    w.stop()


def wait_for(predicate, timeout: float = 90, every: float = 0.2, sweep: bool = False):
    """Poll until predicate() is truthy; with sweep=True also run the beat sweeper as beat would."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if sweep:
            services.jobs_sweep()
        time.sleep(every)
    raise AssertionError("timed out waiting")


def statuses(jobs) -> list[str]:
    return list(GenerationJob.objects.filter(pk__in=[j.pk for j in jobs]).values_list("status", flat=True))


def test_end_to_end_a_submitted_job_is_run_by_the_worker(worker, researcher_a, active, gpt2):
    worker.start()
    job = services.job_submit(actor=researcher_a, checkpoint=gpt2, params=params(max_new_tokens=24, num_samples=2))
    wait_for(lambda: GenerationJob.objects.get(pk=job.pk).status in FINISHED)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error_message
    assert job.samples.count() == 2 and job.worker.startswith("test1@")
    assert tokens_charged_today(organization=job.organization, checkpoint=gpt2) == job.tokens_generated > 0
    assert audit_chain_verify().ok


def other_backends() -> set[int]:
    """PostgreSQL server processes serving other connections to the test database: the worker's."""
    with connection.cursor() as cursor:
        # Client connections only: an autovacuum worker on this database may come and go meanwhile.
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        return {pid for (pid,) in cursor.fetchall()}


def test_the_worker_runs_one_job_after_another_on_one_database_connection(worker, researcher_a, active, gpt2):
    # A new connection per task cost each job a server process with cold caches: half its fixed cost.
    worker.start()
    served = []
    for _ in range(2):
        job = services.job_submit(actor=researcher_a, checkpoint=gpt2, params=params(max_new_tokens=4))
        wait_for(lambda job=job: GenerationJob.objects.get(pk=job.pk).status in FINISHED)
        time.sleep(0.5)  # past the task's end, where a connection would be closed
        served.append(other_backends())
    assert served[0] and served[0] == served[1]


def test_eight_compatible_jobs_run_in_fewer_batches_with_the_same_samples_as_alone(worker, researcher_a, active, gpt2):
    with transaction.atomic():  # all eight are queued before the worker sees the first
        jobs = [
            services.job_submit(
                actor=researcher_a,
                checkpoint=gpt2,
                params=params(
                    prompt=f"Clause {n}: the partner",
                    max_new_tokens=12 + n,
                    temperature=(n % 2) * 0.9,
                    seed=n,
                    num_samples=1 + n % 2,
                ),
            )
            for n in range(8)
        ]
    worker.start()
    wait_for(lambda: set(statuses(jobs)) <= {"succeeded"} and len(statuses(jobs)) == 8, timeout=120)
    batches = {tuple(sorted(e)) for e in _batches_of(jobs)}
    assert len(batches) < 8
    assert max(GenerationJob.objects.filter(pk__in=[j.pk for j in jobs]).values_list("batch_size", flat=True)) > 1
    for job in jobs:
        alone = _alone(gpt2, job)
        stored = list(job.samples.order_by("index").values_list("text", flat=True))
        expected = [services.storable_text(s.text) for s in alone.samples]  # NUL stored as U+FFFD
        assert stored == expected, f"job {job.pk} differs when batched"


def _batches_of(jobs) -> list[list[int]]:
    from audit.models import AuditEvent

    started = AuditEvent.objects.filter(action="job.started", target_id__in=[str(j.pk) for j in jobs])
    return [event.data["batch"] for event in started]


def _alone(checkpoint, job: GenerationJob) -> engine.RequestResult:
    """What the engine gives for the job run on its own (the worker's key, as every worker has)."""
    job.refresh_from_db()
    return engine.generate(checkpoint.weights_path, [job_request(job)], watermark=provenance.current_key())[0]


def test_sigkill_mid_job_five_times_loses_nothing_and_duplicates_nothing(worker, researcher_a, active, gpt2):
    with transaction.atomic():
        jobs = [
            services.job_submit(
                actor=researcher_a,
                checkpoint=gpt2,
                params=params(prompt=f"Run {n}", max_new_tokens=400, num_samples=4, temperature=1.0, seed=n),
            )
            for n in range(6)
        ]
    for _ in range(5):
        worker.start()
        wait_for(lambda: "running" in statuses(jobs) or set(statuses(jobs)) <= FINISHED, timeout=90, every=0.05)
        worker.kill()
        if set(statuses(jobs)) <= FINISHED:
            break
        time.sleep(3.2)  # let the lease lapse, as it would for a dead host
        services.jobs_sweep()
    worker.start()
    wait_for(lambda: set(statuses(jobs)) <= FINISHED, timeout=180, sweep=True, every=0.5)
    for job in GenerationJob.objects.filter(pk__in=[j.pk for j in jobs]):
        assert job.status in {"succeeded", "failed"}, job.status
        assert job.attempts <= settings.INFERENCE_MAX_ATTEMPTS
        if job.status == "succeeded":
            assert job.samples.count() == job.num_samples
        else:
            assert job.error_code == "worker_lost" and not job.samples.exists()
    retried = GenerationJob.objects.filter(pk__in=[j.pk for j in jobs], attempts__gt=1).count()
    assert retried >= 1, "no job was ever killed mid-run"
    indexes = list(Sample.objects.filter(job__in=jobs).values_list("job_id", "index"))
    assert len(indexes) == len(set(indexes))


def test_redis_restarted_while_jobs_are_queued_every_job_still_finishes(worker, researcher_a, active, gpt2, settings):
    settings.INFERENCE_REQUEUE_AFTER_SECONDS = 5
    jobs = [services.job_submit(actor=researcher_a, checkpoint=gpt2, params=params(prompt=f"Q{n}")) for n in range(3)]
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    assert client.llen("gpu") == 3
    _restart_redis(client)
    assert client.llen("gpu") == 0  # Redis keeps nothing on disk: the messages are gone
    worker.start()
    wait_for(lambda: set(statuses(jobs)) == {"succeeded"}, timeout=120, sweep=True, every=1)


def _restart_redis(client: redis.Redis) -> None:
    with contextlib.suppress(redis.ConnectionError):
        client.shutdown(nosave=True)
    subprocess.run([str(ROOT / "scripts" / "services.sh")], check=True, timeout=60)
    wait_for(lambda: client.ping(), timeout=30)


def test_access_revoked_between_submit_and_start_fails_without_generating(worker, legal, researcher_a, active, gpt2):
    from agreements.services import agreement_terminate

    job = services.job_submit(actor=researcher_a, checkpoint=gpt2, params=params())
    agreement_terminate(actor=legal, agreement=active, reason="The partner breached clause 6.")
    worker.start()
    wait_for(lambda: GenerationJob.objects.get(pk=job.pk).status in FINISHED)
    job.refresh_from_db()
    assert job.status == "failed" and job.error_code == "access_denied"
    assert "terminated" in job.error_message and not job.samples.exists()


def _long_job_running(researcher_a, gpt2) -> GenerationJob:
    long = services.job_submit(
        actor=researcher_a, checkpoint=gpt2, params=params(prompt="Termination", max_new_tokens=300, temperature=0)
    )
    wait_for(lambda: GenerationJob.objects.get(pk=long.pk).progress_tokens > 0, timeout=90, every=0.05)
    return long


def test_a_job_submitted_mid_batch_joins_it_and_ends_first(paced_worker, researcher_a, active, gpt2):
    paced_worker.start()
    long = _long_job_running(researcher_a, gpt2)
    short = services.job_submit(
        actor=researcher_a, checkpoint=gpt2, params=params(prompt="Notices", max_new_tokens=12, temperature=0.9, seed=3)
    )
    wait_for(lambda: set(statuses([long, short])) <= FINISHED, timeout=120)
    long.refresh_from_db()
    short.refresh_from_db()
    assert long.status == short.status == "succeeded"
    # Same worker, same running batch: it started and ended while the long job was decoding.
    assert short.worker == long.worker and long.started_at < short.started_at < short.finished_at < long.finished_at
    assert short.batch_size == 2
    alone = _alone(gpt2, short)
    expected = [services.storable_text(s.text) for s in alone.samples]  # NUL stored as U+FFFD
    assert list(short.samples.values_list("text", flat=True)) == expected
    assert tokens_charged_today(organization=long.organization, checkpoint=gpt2) == (
        long.tokens_generated + short.tokens_generated
    )


def test_a_cancel_racing_a_join_keeps_exactly_what_was_generated(paced_worker, researcher_a, active, gpt2):
    paced_worker.start()
    long = _long_job_running(researcher_a, gpt2)
    joining = services.job_submit(
        actor=researcher_a, checkpoint=gpt2, params=params(prompt="Liability", max_new_tokens=200, num_samples=2)
    )
    wait_for(lambda: GenerationJob.objects.get(pk=joining.pk).status != "queued", timeout=60, every=0.01)
    services.job_cancel(actor=researcher_a, job=joining)
    wait_for(lambda: set(statuses([long, joining])) <= FINISHED, timeout=120)
    long.refresh_from_db()
    joining.refresh_from_db()
    assert long.status == "succeeded" and joining.status == "cancelled"
    assert joining.tokens_generated < 2 * 200, "the cancelled job stopped within a few steps"
    assert joining.tokens_generated == sum(joining.samples.values_list("token_count", flat=True))
    assert tokens_charged_today(organization=long.organization, checkpoint=gpt2) == (
        long.tokens_generated + joining.tokens_generated
    )
    alone = _alone(gpt2, long)
    expected = [services.storable_text(s.text) for s in alone.samples]  # NUL stored as U+FFFD
    assert list(long.samples.values_list("text", flat=True)) == expected
