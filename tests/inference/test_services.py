"""Submitting, cancelling and running jobs in-process (the real worker is tested in test_worker.py)."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import timedelta

import pytest
import time_machine
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agreements import services as agreements
from agreements.models import GrantUsage
from agreements.selectors import AccessRefused
from audit.models import AuditEvent
from audit.selectors import audit_chain_verify
from inference import engine, provenance, services, signal, tasks
from inference.models import GenerationJob
from inference.services import IdempotencyConflict, JobParams
from inference.worker import job_request

pytestmark = pytest.mark.django_db


def params(**overrides) -> JobParams:
    values = {
        "prompt": "The partner shall label every sample",
        "max_new_tokens": 8,
        "temperature": 0.0,
        "top_k": 0,
        "top_p": 1.0,
        "num_samples": 1,
        "seed": None,
    }
    values.update(overrides)
    return JobParams(**values)


def submit(user, checkpoint, **overrides) -> GenerationJob:
    return services.job_submit(actor=user, checkpoint=checkpoint, params=params(**overrides))


def test_a_job_runs_and_its_samples_and_tokens_are_recorded(researcher_a, active, gpt2):
    job = submit(researcher_a, gpt2, num_samples=2, seed=3, temperature=0.8)
    assert job.status == GenerationJob.Status.QUEUED and job.grant.agreement == active
    tasks.run_job.apply(args=[job.pk])
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.SUCCEEDED, job.error_message
    samples = list(job.samples.order_by("index"))
    assert [s.index for s in samples] == [0, 1]
    assert job.tokens_generated == sum(s.token_count for s in samples) > 0
    assert job.device == "cpu" and job.attempts == 1 and job.timings["generate_s"] >= 0
    actions = list(AuditEvent.objects.filter(target_id=str(job.pk), target_type="inference.generationjob")
                   .order_by("seq").values_list("action", flat=True))  # fmt: skip
    assert actions == ["job.submitted", "job.started", "job.succeeded"]


def test_a_partner_without_an_agreement_is_refused_and_no_job_is_made(researcher_b, active, gpt2):
    with pytest.raises(AccessRefused) as excinfo:
        submit(researcher_b, gpt2)
    assert excinfo.value.decision.code == "no_agreement"
    assert "gpt2" in str(excinfo.value)
    assert not GenerationJob.objects.exists()
    refusal = AuditEvent.objects.order_by("-seq").first()
    assert refusal.action == "access.refused" and refusal.actor == researcher_b


def test_a_job_that_would_exceed_the_quota_is_refused_up_front(legal, researcher_a, active, gpt2):
    grant = active.grants.get(checkpoint=gpt2)
    grant.daily_token_quota = 20
    grant.save()
    submit(researcher_a, gpt2, max_new_tokens=8, num_samples=2)  # reserves 16
    with pytest.raises(AccessRefused) as excinfo:
        submit(researcher_a, gpt2, max_new_tokens=8)
    assert excinfo.value.decision.code == "quota_exceeded"
    assert "4 of the daily token quota of 20" in str(excinfo.value)
    assert GenerationJob.objects.count() == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 513}, "max_new_tokens"),
        ({"num_samples": 9}, "num_samples"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_k": 1001}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"prompt": "x" * 4001}, "prompt"),
    ],
)
def test_out_of_range_parameters_are_refused_per_field(researcher_a, active, gpt2, overrides, field):
    with pytest.raises(ValidationError) as excinfo:
        submit(researcher_a, gpt2, **overrides)
    assert field in excinfo.value.error_dict
    assert not GenerationJob.objects.exists()


def test_prompt_plus_new_tokens_must_fit_the_context(researcher_a, active, gpt2):
    # Characters the demo tokenizer never saw cost a token per byte.
    long_prompt = "".join(chr(0x4E00 + n) for n in range(400))
    with pytest.raises(ValidationError, match="exceeds gpt2's context of 1,024"):
        submit(researcher_a, gpt2, prompt=long_prompt, max_new_tokens=512)


def test_idempotency_key_returns_the_same_job_and_refuses_a_different_body(researcher_a, active, gpt2):
    first = services.job_submit(actor=researcher_a, checkpoint=gpt2, params=params(), idempotency_key="k-1")
    again = services.job_submit(actor=researcher_a, checkpoint=gpt2, params=params(), idempotency_key="k-1")
    assert again.pk == first.pk
    with pytest.raises(IdempotencyConflict):
        services.job_submit(actor=researcher_a, checkpoint=gpt2, params=params(prompt="other"), idempotency_key="k-1")
    assert GenerationJob.objects.count() == 1


def test_a_cancelled_queued_job_never_starts(researcher_a, active, gpt2):
    job = submit(researcher_a, gpt2)
    services.job_cancel(actor=researcher_a, job=job)
    tasks.run_job.apply(args=[job.pk])
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.CANCELLED and job.attempts == 0 and not job.samples.exists()


def test_partner_b_cannot_cancel_partner_as_job(researcher_a, researcher_b, active, gpt2):
    job = submit(researcher_a, gpt2)
    with pytest.raises(PermissionDenied):
        services.job_cancel(actor=researcher_b, job=job)
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.QUEUED


def test_a_running_job_stops_within_a_few_steps_and_keeps_its_tokens(researcher_a, active, gpt2, monkeypatch, settings):
    settings.INFERENCE_PROGRESS_INTERVAL = 0.05
    job = submit(researcher_a, gpt2, max_new_tokens=400, temperature=1.0, seed=1)
    steps = []

    def cancel_after_five_steps(step: int) -> None:
        steps.append(step)
        if step == 5:
            services.job_cancel(actor=researcher_a, job=GenerationJob.objects.get(pk=job.pk))

    monkeypatch.setattr(engine, "_fault_injector", cancel_after_five_steps)
    monkeypatch.setattr(engine.time, "monotonic", _fast_clock())
    tasks.run_job.apply(args=[job.pk])
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.CANCELLED
    assert 0 < job.tokens_generated < 400 and len(steps) < 20
    assert job.samples.count() == 1


def _fast_clock():
    """A monotonic clock that jumps a second per call, so every step is a progress/cancel poll."""
    ticks = iter(range(10**9))
    return lambda: float(next(ticks))


def test_access_revoked_between_submit_and_start_fails_the_job(legal, researcher_a, active, gpt2):
    job = submit(researcher_a, gpt2)
    agreements.agreement_terminate(actor=legal, agreement=active, reason="Breach of the labelling clause.")
    tasks.run_job.apply(args=[job.pk])
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.FAILED and job.error_code == "access_denied"
    assert "terminated" in job.error_message.lower()
    assert not job.samples.exists() and job.tokens_generated == 0
    assert job.device == ""  # it never ran anywhere


def test_a_job_costs_a_few_statements_to_submit_and_run(researcher_a, active, gpt2):
    tasks.run_job.run(submit(researcher_a, gpt2).pk)  # the first of the day makes the usage row

    def statements(queries) -> list[str]:  # the test's own savepoints are not the job's
        return [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]

    with CaptureQueriesContext(connection) as submitted:
        job = submit(researcher_a, gpt2)
    with CaptureQueriesContext(connection) as ran:
        tasks.run_job.run(job.pk)
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.SUCCEEDED and job.device == "cpu"
    # Access check and reservation 5, the job 1, its audit event 2 (lock and head in one round trip, insert).
    assert len(statements(submitted)) <= 8, "\n".join(statements(submitted))
    # Claim 2 (lead and batch found in one locked read) + audit 2, re-check 1, results 3 + text fingerprints 1
    # + audit 2 + webhook endpoints 1.
    assert len(statements(ran)) <= 12, "\n".join(statements(ran))


def test_compatible_queued_jobs_are_claimed_as_one_batch(researcher_a, active, gpt2, settings):
    settings.INFERENCE_BATCH_MAX_JOBS = 3
    jobs = [submit(researcher_a, gpt2, prompt=f"Prompt {n}") for n in range(5)]
    claimed = services.jobs_claim(job_id=jobs[0].pk, worker="w1", device="cpu", rows=32)
    assert [j.pk for j in claimed] == [j.pk for j in jobs[:3]]
    # Already claimed: nothing twice.
    assert services.jobs_claim(job_id=jobs[1].pk, worker="w2", device="cpu", rows=32) == []


def test_out_of_memory_retries_with_half_the_batch_then_fails_clearly(researcher_a, active, gpt2, monkeypatch):
    jobs = [submit(researcher_a, gpt2, prompt=f"Prompt {n}") for n in range(4)]
    calls = []

    def oom_for_big_batches(step: int) -> None:
        calls.append(step)
        raise engine.torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(engine, "_fault_injector", oom_for_big_batches)
    tasks.run_job.apply(args=[jobs[0].pk])
    for job in jobs:
        job.refresh_from_db()
        assert job.status == GenerationJob.Status.FAILED
        assert job.error_code == "out_of_memory" and "ran out of memory" in job.error_message
    assert len(calls) == 5  # the batch of 4, then each job alone once

    monkeypatch.setattr(engine, "_fault_injector", None)  # the worker keeps serving
    ok = submit(researcher_a, gpt2)
    tasks.run_job.apply(args=[ok.pk])
    ok.refresh_from_db()
    assert ok.status == GenerationJob.Status.SUCCEEDED


def test_out_of_memory_mid_batch_halves_it_and_every_job_still_gets_its_samples(
    researcher_a, active, gpt2, monkeypatch
):
    jobs = [
        submit(researcher_a, gpt2, prompt=f"Prompt {n}", max_new_tokens=20, temperature=0.9 * (n % 2), seed=n)
        for n in range(4)
    ]
    failed = []

    def oom_once_at_step_3(step: int) -> None:
        if step == 3 and not failed:
            failed.append(step)
            raise engine.torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(engine, "_fault_injector", oom_once_at_step_3)
    tasks.run_job.apply(args=[jobs[0].pk])
    monkeypatch.setattr(engine, "_fault_injector", None)
    assert failed == [3]
    for job in jobs:
        job.refresh_from_db()
        assert job.status == GenerationJob.Status.SUCCEEDED, job.error_message
        [alone] = engine.generate(gpt2.weights_path, [job_request(job)], watermark=provenance.current_key())
        expected = [services.storable_text(s.text) for s in alone.samples]  # NUL stored as U+FFFD
        assert list(job.samples.values_list("text", flat=True)) == expected


def test_the_sweeper_requeues_lapsed_jobs_then_gives_up_after_three_attempts(researcher_a, active, gpt2, settings):
    settings.INFERENCE_LEASE_SECONDS = 10
    job = submit(researcher_a, gpt2)
    for attempt in (1, 2, 3):
        assert [j.pk for j in services.jobs_claim(job_id=job.pk, worker=f"dead-{attempt}", device="cpu", rows=32)] == [
            job.pk
        ]
        with time_machine.travel(timezone.now() + timedelta(seconds=11 * attempt)):
            swept = services.jobs_sweep()
        job.refresh_from_db()
        if attempt < 3:
            assert swept["requeued"] == [job.pk] and job.status == GenerationJob.Status.QUEUED
    assert swept["failed"] == [job.pk]
    assert job.status == GenerationJob.Status.FAILED and job.error_code == "worker_lost"


def test_queued_jobs_never_claimed_are_sent_again(researcher_a, active, gpt2, settings):
    settings.INFERENCE_REQUEUE_AFTER_SECONDS = 60
    job = submit(researcher_a, gpt2)
    assert services.jobs_sweep()["resent"] == []
    with time_machine.travel(timezone.now() + timedelta(seconds=61)):
        assert services.jobs_sweep()["resent"] == [job.pk]


def test_jobs_ending_together_are_stored_in_one_transaction_each_with_its_own_trail(researcher_a, active, gpt2):
    jobs = [submit(researcher_a, gpt2, prompt=f"Prompt {n}", num_samples=2) for n in range(3)]
    claimed = services.jobs_claim(worker="w1", device="cpu", rows=8, job_id=jobs[0].pk)
    usage = GrantUsage.objects.get(grant=claimed[0].grant)
    assert usage.tokens_reserved == sum(job.expected_tokens for job in jobs)
    # The sweeper gave the last one to another worker meanwhile: its result is not ours to store.
    GenerationJob.objects.filter(pk=jobs[2].pk).update(worker="w2")
    text = "the partner shall label every synthetic sample it publishes under this agreement"
    results = [
        services.JobResult(job=job, samples=[(0, f"{text} {job.pk} a", 5), (1, f"{text} {job.pk} b", 7)],
                           prompt_tokens=4, cancelled=False, batch_size=3, timings={})
        for job in claimed
    ]  # fmt: skip
    with CaptureQueriesContext(connection) as storing:
        stored = services.jobs_complete(results=results, worker="w1", device="cpu")
    assert stored == [jobs[0].pk, jobs[1].pk]
    inserts = [q["sql"].split(" (")[0] for q in storing.captured_queries if q["sql"].startswith("INSERT")]
    tables = ["inference_sample", "inference_samplefingerprint", "audit_auditevent"]
    assert sorted(inserts) == sorted(f'INSERT INTO "{table}"' for table in tables)
    for job in jobs[:2]:
        job.refresh_from_db()
        assert (job.status, job.tokens_generated) == ("succeeded", 12)
        assert [s.text for s in job.samples.order_by("index")] == [f"{text} {job.pk} a", f"{text} {job.pk} b"]
        [event] = AuditEvent.objects.filter(action="job.succeeded", target_id=str(job.pk))
        assert event.data["samples"] == [s.sha256 for s in job.samples.order_by("index")]
    assert GenerationJob.objects.get(pk=jobs[2].pk).status == "running"
    usage.refresh_from_db()
    # The two stored jobs settled at what they generated; the third keeps its reservation.
    assert (usage.tokens_used, usage.tokens_reserved) == (24, jobs[2].expected_tokens)
    assert audit_chain_verify().ok


def test_a_sample_with_a_nul_byte_is_stored_not_lost(researcher_a, active, gpt2):
    # Byte-level BPE can emit NUL, which PostgreSQL text cannot hold; the job must still finish.
    job = submit(researcher_a, gpt2)
    [claimed] = services.jobs_claim(job_id=job.pk, worker="w1", device="cpu", rows=32)
    result = services.JobResult(
        job=claimed, samples=[(0, "a\x00b", 3)], prompt_tokens=4, cancelled=False, batch_size=1, timings={}
    )
    stored = services.jobs_complete(results=[result], worker="w1", device="cpu")
    assert stored
    sample = job.samples.get()
    assert sample.text == "a\ufffdb"
    assert sample.sha256 == hashlib.sha256("a\ufffdb".encode()).hexdigest()


def test_a_checkpoint_routed_to_its_own_queue_is_sent_there(
    researcher_a, active, gpt2, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.INFERENCE_CHECKPOINT_QUEUES = {"gpt2": "gpu-small"}
    settings.INFERENCE_SOFT_TIME_LIMIT, settings.INFERENCE_TIME_LIMIT = 30, 40
    sent = []
    monkeypatch.setattr(tasks.run_job, "apply_async", lambda args, queue, **limits: sent.append((args, queue, limits)))
    with django_capture_on_commit_callbacks(execute=True):
        job = submit(researcher_a, gpt2)
    # The generation time limits travel with the message: the GPU worker enforces what the sender says.
    assert sent == [([job.pk], "gpu-small", {"soft_time_limit": 30, "time_limit": 40})]
    assert services.queue_for("gpt2-medium") == "gpu"  # unrouted checkpoints use the default queue


def test_queue_routes_are_parsed_strictly(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "MODELPACT_VAR_DIR": str(tmp_path), "INFERENCE_CHECKPOINT_QUEUES": "gpt2-xl"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "INFERENCE_CHECKPOINT_QUEUES" in result.stderr


# --- jobs_claim and job_progress: what the worker loop calls ---------------------------------------------


def test_jobs_claim_takes_the_lead_and_the_queued_jobs_that_fit_oldest_first(researcher_a, active, gpt2):
    jobs = [submit(researcher_a, gpt2, prompt=f"Prompt {n}", num_samples=n) for n in (2, 2, 3, 1)]
    claimed = services.jobs_claim(worker="w1", device="cpu", rows=5, job_id=jobs[0].pk)
    # 2 + 2 fit in 5 rows; the 3-sample job does not, and the 1-sample one waits behind it.
    assert [j.pk for j in claimed] == [jobs[0].pk, jobs[1].pk]
    for job in claimed:
        job.refresh_from_db()
        assert (job.status, job.worker, job.device, job.attempts) == ("running", "w1", "cpu", 1)
        assert job.started_at is not None and job.lease_expires_at > timezone.now()
    assert GenerationJob.objects.filter(pk__in=[jobs[2].pk, jobs[3].pk], status="queued").count() == 2
    started = AuditEvent.objects.filter(action="job.started", target_id__in=[str(j.pk) for j in claimed])
    assert started.count() == 2  # each job's own trail shows it started


def test_jobs_claim_takes_a_lead_larger_than_the_room_and_nothing_else(researcher_a, active, gpt2):
    big, small = submit(researcher_a, gpt2, num_samples=4), submit(researcher_a, gpt2, num_samples=1)
    assert [j.pk for j in services.jobs_claim(worker="w1", device="cpu", rows=2, job_id=big.pk)] == [big.pk]
    assert GenerationJob.objects.get(pk=small.pk).status == "queued"


def test_a_redelivered_message_claims_nothing(researcher_a, active, gpt2):
    job = submit(researcher_a, gpt2)
    assert services.jobs_claim(worker="w1", device="cpu", rows=8, job_id=job.pk)
    assert services.jobs_claim(worker="w2", device="cpu", rows=8, job_id=job.pk) == []
    job.refresh_from_db()
    assert (job.worker, job.attempts) == ("w1", 1)


def test_jobs_claim_by_checkpoint_takes_the_oldest_queued_jobs(researcher_a, active, gpt2):
    jobs = [submit(researcher_a, gpt2, prompt=f"Prompt {n}", num_samples=2) for n in range(3)]
    claimed = services.jobs_claim(worker="w1", device="cpu", rows=4, checkpoint_id=gpt2.pk)
    assert [j.pk for j in claimed] == [jobs[0].pk, jobs[1].pk]
    assert claimed[0].grant.agreement == active  # loaded with the claim, for the re-check and the results


def test_a_claimed_batch_records_each_jobs_start_in_one_insert(researcher_a, active, gpt2):
    jobs = [submit(researcher_a, gpt2, prompt=f"Prompt {n}") for n in range(3)]
    with CaptureQueriesContext(connection) as claiming:
        claimed = services.jobs_claim(worker="w1", device="cpu", rows=8, job_id=jobs[0].pk)
    assert len(claimed) == 3
    inserts = [q for q in claiming.captured_queries if q["sql"].startswith('INSERT INTO "audit_auditevent"')]
    assert len(inserts) == 1
    for job in jobs:
        [started] = AuditEvent.objects.filter(action="job.started", target_id=str(job.pk))
        assert started.organization_id == job.organization_id
        assert started.data == {"worker": "w1", "attempt": 1, "batch": [j.pk for j in jobs]}
    assert audit_chain_verify().ok


def test_jobs_claim_takes_the_longest_queued_jobs_first(researcher_a, active, gpt2):
    short, long, middle = (submit(researcher_a, gpt2, max_new_tokens=n) for n in (8, 64, 32))
    claimed = services.jobs_claim(worker="w1", device="cpu", rows=2, checkpoint_id=gpt2.pk)
    # The batch's last steps then decode the short job beside others rather than the long one alone.
    assert {j.pk for j in claimed} == {long.pk, middle.pk}
    assert GenerationJob.objects.get(pk=short.pk).status == "queued"


def test_a_job_queued_past_the_longest_first_wait_is_passed_over_no_more(researcher_a, active, gpt2, settings):
    settings.INFERENCE_LONGEST_FIRST_SECONDS = 30
    short, long = submit(researcher_a, gpt2, max_new_tokens=8), submit(researcher_a, gpt2, max_new_tokens=64)
    GenerationJob.objects.filter(pk=short.pk).update(created_at=timezone.now() - timedelta(seconds=31))
    claimed = services.jobs_claim(worker="w1", device="cpu", rows=1, checkpoint_id=gpt2.pk)
    assert [j.pk for j in claimed] == [short.pk]
    assert GenerationJob.objects.get(pk=long.pk).status == "queued"


@pytest.mark.parametrize("wait", [0, 30])
def test_the_claim_order_and_the_jobs_counted_before_each_agree(researcher_a, active, gpt2, settings, wait):
    settings.INFERENCE_LONGEST_FIRST_SECONDS = wait
    now = timezone.now()
    # (seconds queued, new tokens): overdue and fresh jobs, long and short, ties in length and in age.
    shapes = [(5, 16), (40, 8), (5, 64), (90, 32), (1, 64), (40, 8), (5, 16)]
    for age, tokens in shapes:
        job = submit(researcher_a, gpt2, max_new_tokens=tokens)
        GenerationJob.objects.filter(pk=job.pk).update(created_at=now - timedelta(seconds=age))
    queued = GenerationJob.objects.filter(status="queued", checkpoint=gpt2)
    order = list(queued.order_by(*services.claim_order(now)))
    assert [queued.filter(services.claimed_before(job, now)).count() for job in order] == list(range(len(shapes)))


def test_without_a_longest_first_wait_jobs_are_claimed_oldest_first(researcher_a, active, gpt2, settings):
    settings.INFERENCE_LONGEST_FIRST_SECONDS = 0
    short = submit(researcher_a, gpt2, max_new_tokens=8)
    submit(researcher_a, gpt2, max_new_tokens=64)
    claimed = services.jobs_claim(worker="w1", device="cpu", rows=1, checkpoint_id=gpt2.pk)
    assert [j.pk for j in claimed] == [short.pk]


def test_a_job_refused_at_the_claim_fails_and_is_not_returned(legal, researcher_a, active, gpt2):
    job = submit(researcher_a, gpt2)
    agreements.agreement_terminate(actor=legal, agreement=active, reason="Breach of the labelling clause.")
    assert services.jobs_claim(worker="w1", device="cpu", rows=8, job_id=job.pk) == []
    job.refresh_from_db()
    assert (job.status, job.error_code, job.device) == ("failed", "access_denied", "")
    assert "terminated" in job.error_message.lower()
    assert AuditEvent.objects.filter(action="access.refused", organization=job.organization).exists()


def test_the_claims_recheck_learns_access_is_not_paused_from_the_claim_itself(researcher_a, active, gpt2):
    jobs = [submit(researcher_a, gpt2, prompt=f"Prompt {n}") for n in range(2)]
    with CaptureQueriesContext(connection) as claiming:
        claimed = services.jobs_claim(worker="w1", device="cpu", rows=8, job_id=jobs[0].pk)
    assert [j.pk for j in claimed] == [j.pk for j in jobs]
    reads = [q["sql"] for q in claiming.captured_queries if q["sql"].startswith("SELECT")]
    reads = [sql for sql in reads if "pg_advisory_xact_lock" not in sql]  # the audit chain's head, per event
    # One read: the jobs, locked, with their grants and whether an overdue report pauses their organisation.
    # Nothing more is read for the re-check of a grant that still holds.
    assert len(reads) == 1 and "agreements_obligation" in reads[0] and "FOR UPDATE" in reads[0]


def test_job_progress_is_one_statement_and_returns_the_cancelled_jobs(researcher_a, active, gpt2):
    first, second = submit(researcher_a, gpt2, prompt="One"), submit(researcher_a, gpt2, prompt="Two")
    services.jobs_claim(worker="w1", device="cpu", rows=8, job_id=first.pk)
    services.job_cancel(actor=researcher_a, job=second)
    with CaptureQueriesContext(connection) as progressed:
        cancelled = services.job_progress(tokens={first.pk: 5, second.pk: 3}, worker="w1")
    assert len(progressed.captured_queries) == 1
    assert cancelled == {second.pk}
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.progress_tokens, second.progress_tokens) == (5, 3)
    assert services.job_progress(tokens={first.pk: 7}, worker="someone-else") == set()  # not theirs
    first.refresh_from_db()
    assert first.progress_tokens == 5


# --- The finished signal: a waiting client learns at once, without polling -------------------------------


def _complete(job: GenerationJob) -> None:
    result = services.JobResult(
        job=job, samples=[(0, "text", 4)], prompt_tokens=5, cancelled=False, batch_size=1, timings={}
    )
    assert services.jobs_complete(results=[result], worker="w1", device="cpu")


def _wait_in_thread(job_id: int, timeout_s: float, poll_s: float) -> tuple[threading.Thread, dict]:
    """A client in another thread (its own database connection), as a web request would be."""
    result: dict = {}

    def wait() -> None:
        try:
            result["finished"] = signal.job_wait_finished(job_id, timeout_s, poll_s=poll_s)
            result["at"] = time.monotonic()
        finally:
            connection.close()

    thread = threading.Thread(target=wait)
    thread.start()
    return thread, result


@pytest.mark.django_db(transaction=True)
def test_a_waiting_client_returns_as_soon_as_the_job_completes(researcher_a, active, gpt2, monkeypatch):
    monkeypatch.setattr(services, "enqueue_job", lambda job: None)  # committed at once here: no eager run
    job = submit(researcher_a, gpt2)
    [job] = services.jobs_claim(worker="w1", device="cpu", rows=8, job_id=job.pk)
    # Its fallback poll is far longer than the test: only the signal can wake it in time.
    thread, result = _wait_in_thread(job.pk, timeout_s=20, poll_s=60)
    time.sleep(0.3)  # subscribed and waiting
    assert thread.is_alive()
    _complete(job)
    completed = time.monotonic()
    thread.join(timeout=20)
    assert result["finished"] is True
    assert result["at"] - completed < 2


@pytest.mark.django_db(transaction=True)
def test_without_redis_the_job_still_completes_and_a_client_learns_it_by_polling(
    researcher_a, active, gpt2, settings, monkeypatch
):
    monkeypatch.setattr(services, "enqueue_job", lambda job: None)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    job = submit(researcher_a, gpt2)
    [job] = services.jobs_claim(worker="w1", device="cpu", rows=8, job_id=job.pk)
    thread, result = _wait_in_thread(job.pk, timeout_s=20, poll_s=0.05)
    time.sleep(0.3)
    _complete(job)  # publishing fails quietly: the job is stored all the same
    thread.join(timeout=20)
    assert GenerationJob.objects.get(pk=job.pk).status == "succeeded"
    assert result["finished"] is True


def test_waiting_on_an_unfinished_job_gives_up_after_the_timeout(researcher_a, active, gpt2):
    job = submit(researcher_a, gpt2)
    started = time.monotonic()
    assert signal.job_wait_finished(job.pk, 0.3) is False
    assert 0.3 <= time.monotonic() - started < 3
    services.job_cancel(actor=researcher_a, job=job)
    assert signal.job_wait_finished(job.pk, 5) is True  # already finished: at once
