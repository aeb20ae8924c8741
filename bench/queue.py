"""Queue benchmark: submit -> succeeded through Redis and a warm Celery worker, against generate() alone.

Self-contained: creates a PostgreSQL database (dropped at the end), migrates it, seeds the demo
organisations, agreements and demo checkpoints into a temporary folder, flushes a Redis database,
starts a real worker process (`celery -A config worker --pool prefork --concurrency 1`, as in
production), warms it with one job, then
runs N sequential 64-token jobs, each observed as a client does: waiting on the job's finished signal
(inference.signal.job_wait_finished, what `GET /api/v1/jobs/{id}/?wait=N` calls), not polling. Each
queued job is paired with an in-process engine.generate() of the same input, in the same run,
interleaved so that load from other processes hits both alike. Prints one JSON object: p50/p95 both
ways, their ratio (target <= 1.2), the paired overhead's distribution (no 0.5 s or 2 s steps), a
per-phase breakdown from the job rows' timestamps, an in-process attribution (time and SQL queries
per service call), the same for a burst of equal jobs claimed and stored as one batch (they start
together and end at the same step), and the SQL floor: one job's statements replayed raw through
psycopg, which is what they cost PostgreSQL and the wire however the Python around them is written.

    .venv/bin/python bench/queue.py [--jobs 30] [--checkpoint gpt2-medium] [--threads 1]

Environment (defaults in brackets): BENCH_PG_URL [postgres://postgres:postgres@127.0.0.1:5432],
BENCH_DB_NAME [mp_bench_queue], BENCH_BROKER_URL [redis://127.0.0.1:6379/9; flushed first].
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
# Run as `python bench/queue.py`, sys.path[0] is bench/, and this file would shadow the stdlib
# `queue` module that Celery, kombu and urllib3 import. Drop it before anything imports `queue`.
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from datetime import datetime  # noqa: E402

from bench._common import (  # noqa: E402
    emit,
    machine_info,
    percentile,
    quiet_transformers,
    stdout_to_stderr,
    summary,
)
from bench._stack import Stack  # noqa: E402

TARGET_RATIO = 1.2
POLL_S = 0.01  # the back-to-back check's wait for a job to start (no signal for starting)
PROMPT = "The Partner may use the checkpoint only for the purpose stated in the agreement, and"


class _Timer:
    """Wraps module functions: calls, seconds and SQL queries per name (nested calls count in both)."""

    def __init__(self) -> None:
        self.stats: dict[str, list[float]] = collections.defaultdict(list)
        self.queries: dict[str, int] = collections.Counter()
        self._active: list[str] = []
        self._patches: list[tuple[object, str, object]] = []

    def patch(self, owner: object, attr: str, label: str | None = None) -> None:
        original = getattr(owner, attr)
        label = label or attr

        def wrapper(*args, **kwargs):
            self._active.append(label)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.stats[label].append(time.perf_counter() - started)
                self._active.pop()

        self._patches.append((owner, attr, original))
        setattr(owner, attr, wrapper)

    @contextlib.contextmanager
    def span(self, label: str):
        self._active.append(label)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stats[label].append(time.perf_counter() - started)
            self._active.pop()

    def sql(self, execute, sql, params, many, context):
        for label in set(self._active):
            self.queries[label] += 1
        return execute(sql, params, many, context)

    def restore(self) -> None:
        for owner, attr, original in reversed(self._patches):
            setattr(owner, attr, original)
        self._patches.clear()

    def report(self, jobs: int) -> dict:
        return {
            label: {
                "calls_per_job": round(len(times) / jobs, 2),
                "ms_per_job": round(sum(times) / jobs * 1000, 2),
                "queries_per_job": round(self.queries[label] / jobs, 1),
            }
            for label, times in sorted(self.stats.items(), key=lambda kv: -sum(kv[1]))
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30, help="measured jobs (after one warm-up job)")
    parser.add_argument("--checkpoint", default="gpt2-medium", help="demo checkpoint slug Partner A may use")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads, here and in the worker (its INFERENCE_TORCH_THREADS)"
    )
    parser.add_argument("--budget-s", type=float, default=110, help="stop measuring after this long (min 10 jobs)")
    parser.add_argument("--pairs", type=int, default=6, help="back-to-back pairs for the idle-gap check")
    parser.add_argument("--attribution-jobs", type=int, default=8, help="in-process jobs timed per service call")
    parser.add_argument("--batch-jobs", type=int, default=8, help="equal jobs per burst in the batch attribution")
    parser.add_argument("--batch-rounds", type=int, default=10, help="bursts timed in the batch attribution")
    parser.add_argument("--floor-reps", type=int, default=40, help="replays of one job's SQL for the floor")
    parser.add_argument(
        "--pool", choices=["prefork", "solo", "threads"], default="prefork", help="worker pool (production: prefork)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database and temp folder (debugging)")
    args = parser.parse_args()
    started = time.perf_counter()

    stack = Stack(db_name=os.environ.get("BENCH_DB_NAME", "mp_bench_queue"), prefix="mp-bench-queue-")
    # The worker pins torch to INFERENCE_TORCH_THREADS when it starts; generate() alone runs here with
    # as many, or the ratio would compare different thread counts.
    os.environ["OMP_NUM_THREADS"] = os.environ["INFERENCE_TORCH_THREADS"] = str(args.threads)
    worker_log = stack.tmp / "worker.log"
    out: dict = {"benchmark": "queue", "worker_pool": args.pool}
    phase = "setup"
    try:
        with stdout_to_stderr():
            quiet_transformers()
            import torch

            torch.set_num_threads(args.threads)
            stack.setup()
            from django.db import connection

            from accounts.models import User
            from inference import engine, services, tasks
            from inference.models import GenerationJob
            from inference.signal import job_wait_finished
            from models_registry.models import Checkpoint

            researcher = User.objects.get(email="researcher@partner-a.example")
            checkpoint = Checkpoint.objects.get(slug=args.checkpoint)
            params = services.JobParams(
                prompt=PROMPT, max_new_tokens=args.new_tokens, temperature=0.0,
                top_k=0, top_p=1.0, num_samples=1, seed=None,
            )  # fmt: skip
            request = engine.GenerationRequest(
                key="bench", prompt=PROMPT, params=engine.SamplingParams(max_new_tokens=args.new_tokens, temperature=0)
            )
            direct_cache = engine.ModelCache()

            phase = "worker"
            stack.start_worker(env={}, log=worker_log, queues="default,gpu", pool=args.pool)

            publish_times: list[float] = []
            original_apply_async = tasks.run_job.apply_async

            def timed_apply_async(*a, **kw):
                t0 = time.perf_counter()
                try:
                    return original_apply_async(*a, **kw)
                finally:
                    publish_times.append(time.perf_counter() - t0)

            tasks.run_job.apply_async = timed_apply_async

            def submit_and_wait(timeout: float) -> dict:
                t0_wall = time.time()
                t0 = time.perf_counter()
                job = services.job_submit(actor=researcher, checkpoint=checkpoint, params=params)
                t1 = time.perf_counter()
                finished = job_wait_finished(job.pk, timeout)
                t2 = time.perf_counter()
                row = GenerationJob.objects.filter(pk=job.pk).values(
                    "status", "created_at", "started_at", "finished_at", "timings", "error_message"
                )[0]
                if not finished:
                    raise RuntimeError(f"job {job.pk} still {row['status']} after {timeout} s; see {worker_log}")
                if row["status"] != "succeeded":
                    raise RuntimeError(f"job {job.pk} {row['status']}: {row['error_message']}")

                def rel(value: datetime) -> float:
                    return value.timestamp() - t0_wall

                timings = row["timings"]
                run_s = (row["finished_at"] - row["started_at"]).total_seconds()
                return {
                    "e2e_s": t2 - t0,
                    "submit_s": t1 - t0,
                    "dispatch_s": rel(row["started_at"]) - (t1 - t0),  # submit returned -> claimed
                    "run_s": run_s,
                    "generate_s": timings.get("generate_s", 0.0),
                    "load_s": timings.get("load_s", 0.0),
                    "run_other_s": run_s - timings.get("generate_s", 0.0) - timings.get("load_s", 0.0),
                    "observe_s": (t2 - t0) - rel(row["finished_at"]),  # finished_at -> the waiter returns
                }

            def direct() -> float:
                t0 = time.perf_counter()
                engine.generate(checkpoint.weights_path, [request], device="cpu", cache=direct_cache)
                return time.perf_counter() - t0

            t = time.perf_counter()
            warm = submit_and_wait(timeout=180)  # includes the worker's start-up and model load
            worker_ready_s = time.perf_counter() - t
            direct()  # load and warm the in-process model too
            publish_times.clear()

            phase = "measure"
            rows: list[dict] = []
            baseline: list[float] = []
            measure_started = time.perf_counter()
            for n in range(args.jobs):
                # Alternate which goes first, so neither always follows the other.
                if n % 2:
                    baseline.append(direct())
                    rows.append(submit_and_wait(timeout=120))
                else:
                    rows.append(submit_and_wait(timeout=120))
                    baseline.append(direct())
                if n + 1 >= 10 and time.perf_counter() - measure_started > args.budget_s:
                    break
            tasks.run_job.apply_async = original_apply_async

            # Back to back: B is submitted while A runs, so B's message waits in Redis while the worker
            # holds A unacknowledged (acks_late, prefetch 1). The gap from A's finish to B's claim is the
            # broker idle gap the DESIGN warns about (a 1 s BRPOP timeout, a 0.5 s poll) if there is one.
            phase = "back_to_back"
            gaps: list[float] = []
            overlapped = 0
            for _ in range(args.pairs):
                first = services.job_submit(actor=researcher, checkpoint=checkpoint, params=params)
                deadline = time.perf_counter() + 60
                while GenerationJob.objects.filter(pk=first.pk, status="queued").exists():
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"job {first.pk} never started; see {worker_log}")
                    time.sleep(0.002)
                second = services.job_submit(actor=researcher, checkpoint=checkpoint, params=params)
                for pk in (first.pk, second.pk):
                    if not job_wait_finished(pk, max(0.0, deadline - time.perf_counter())):
                        raise RuntimeError(f"jobs {first.pk}, {second.pk} did not finish; see {worker_log}")
                a = GenerationJob.objects.get(pk=first.pk)
                b = GenerationJob.objects.get(pk=second.pk)
                if b.created_at < a.finished_at and b.batch_size == 1:  # B really waited behind A
                    overlapped += 1
                    gaps.append((b.started_at - a.finished_at).total_seconds())

            # Where the time goes, per service call, run in this process with the same code the worker
            # runs (inference.tasks.run_job), the broker left out: the job is only in the database.
            phase = "attribution"
            real_enqueue = services.enqueue_job
            # One uncounted job first: this process loads its own copy of the model on the first run.
            services.enqueue_job = _no_enqueue(real_enqueue)
            tasks.run_job.run(services.job_submit(actor=researcher, checkpoint=checkpoint, params=params).pk)
            services.enqueue_job = real_enqueue
            timer = _Timer()
            timer.patch(services, "job_submit", "submit: job_submit (total)")
            timer.patch(services, "validate_params", "submit: validate_params")
            timer.patch(services, "_create_job", "submit: _create_job (tx)")
            timer.patch(services, "access_check", "access_check")
            timer.patch(services, "audit_append", "audit_append")
            timer.patch(services, "jobs_claim", "worker: jobs_claim")
            timer.patch(services, "job_progress", "worker: job_progress")
            timer.patch(services, "jobs_complete", "worker: jobs_complete")
            timer.patch(engine.RunningBatch, "add", "worker: RunningBatch.add (prefill)")
            timer.patch(engine.RunningBatch, "step", "worker: RunningBatch.step")
            services_enqueue = services.enqueue_job
            attributed = 0
            with connection.execute_wrapper(timer.sql):
                for _ in range(args.attribution_jobs):
                    # No broker message: the idle worker never sees these jobs.
                    services.enqueue_job = _no_enqueue(services_enqueue)
                    job = services.job_submit(actor=researcher, checkpoint=checkpoint, params=params)
                    services.enqueue_job = services_enqueue
                    with timer.span("worker: run_job (total)"):
                        tasks.run_job.run(job.pk)
                    attributed += 1
            timer.restore()
            services.enqueue_job = services_enqueue
            attribution = timer.report(attributed)

            # A burst of equal jobs: one task claims them all and they end at the same step, so the
            # claim and the store each run once per batch.
            phase = "batch_attribution"
            services.enqueue_job = _no_enqueue(services_enqueue)
            burst = dataclasses.replace(params, max_new_tokens=8)
            batch_timer = _Timer()
            batch_timer.patch(services, "jobs_claim", "worker: jobs_claim")
            batch_timer.patch(services, "jobs_complete", "worker: jobs_complete")
            with connection.execute_wrapper(batch_timer.sql):
                for _ in range(args.batch_rounds):
                    jobs = [
                        services.job_submit(actor=researcher, checkpoint=checkpoint, params=burst)
                        for _ in range(args.batch_jobs)
                    ]
                    tasks.run_job.run(jobs[0].pk)
                    done = GenerationJob.objects.filter(pk__in=[j.pk for j in jobs], status="succeeded")
                    if done.count() < len(jobs):
                        raise RuntimeError("a burst did not run to the end as one batch")
            batch_timer.restore()
            services.enqueue_job = services_enqueue
            batch_attribution = {
                "jobs_per_batch": args.batch_jobs,
                "new_tokens": burst.max_new_tokens,
                "per_batch": {
                    label: {key.replace("_per_job", "_per_batch"): value for key, value in figures.items()}
                    for label, figures in batch_timer.report(args.batch_rounds).items()
                },
            }

            phase = "sql_floor"
            services.enqueue_job = _no_enqueue(services_enqueue)
            try:
                sql_floor = _sql_floor(lambda: tasks.run_job.run(
                    services.job_submit(actor=researcher, checkpoint=checkpoint, params=params).pk
                ), reps=args.floor_reps)  # fmt: skip
            finally:
                services.enqueue_job = services_enqueue

        e2e = [r["e2e_s"] for r in rows]
        overhead = [r["e2e_s"] - b for r, b in zip(rows, baseline, strict=True)]
        e2e_p50, e2e_p95 = summary(e2e)["p50"], summary(e2e)["p95"]
        base = summary(baseline)
        ratio_p50 = e2e_p50 / base["p50"]
        ratio_p95 = e2e_p95 / base["p95"]
        # The queue's own cost: everything but the worker's generate() and model fetch. A 0.5 s or 2 s
        # step (result polling, broker idle gap) shows here, free of generate()'s run-to-run noise.
        fixed = [r["e2e_s"] - r["generate_s"] - r["load_s"] for r in rows]
        steps = {
            "queue_overhead_over_0.4s": sum(1 for x in fixed if x > 0.4),
            "queue_overhead_over_1.5s": sum(1 for x in fixed if x > 1.5),
        }
        buckets = collections.Counter(int(x * 1000) // 25 * 25 for x in fixed)
        histogram = {f"{low}-{low + 25}ms": count for low, count in sorted(buckets.items())}
        out.update(
            {
                "checkpoint": args.checkpoint,
                "new_tokens": args.new_tokens,
                "jobs_measured": len(rows),
                "observer": "job_wait_finished (Redis pub/sub finished signal)",
                "queue_e2e_s": summary(e2e),
                "generate_alone_s": base,
                "ratio_p50": round(ratio_p50, 3),
                "ratio_p95": round(ratio_p95, 3),
                "target": f"p50 and p95 ratio <= {TARGET_RATIO}; no 0.5 s or 2 s steps in the overhead",
                "overhead_vs_alone_s": {
                    **summary(overhead),
                    "spread_max_minus_min": round(max(overhead) - min(overhead), 4),
                    "note": "paired e2e minus generate() alone; includes generate()'s own run-to-run noise",
                },
                "queue_overhead_s": {
                    **summary(fixed),
                    "spread_max_minus_min": round(max(fixed) - min(fixed), 4),
                    "histogram_25ms": histogram,
                    "note": "e2e minus the worker's own generate_s and load_s: submit, broker, claim, writes, poll",
                },
                "worker_generate_vs_alone_p50": round(summary([r["generate_s"] for r in rows])["p50"] / base["p50"], 3),
                "steps": steps,
                "pass": ratio_p50 <= TARGET_RATIO
                and ratio_p95 <= TARGET_RATIO
                and steps["queue_overhead_over_0.4s"] == 0,
                "phases_s": {
                    key: summary([r[key] for r in rows])
                    for key in ("submit_s", "dispatch_s", "run_s", "generate_s", "run_other_s", "observe_s")
                },
                "back_to_back_gap_s": {
                    **(summary(gaps) if gaps else {}),
                    "pairs": args.pairs,
                    "overlapped": overlapped,
                    "note": "B submitted while A runs: B.started_at - A.finished_at (worker idle gap)",
                },
                "broker_publish_s": summary(publish_times) if publish_times else None,
                "attribution_in_process": {"jobs": attributed, "per_call": attribution},
                "batch_attribution_in_process": batch_attribution,
                "sql_floor": sql_floor,
                "setup_s": {
                    "migrate": stack.timings["migrate_s"],
                    "seed_demo": stack.timings["seed_demo_s"],
                    "worker_start_and_first_job": round(worker_ready_s, 1),
                },
                "warm_job": {k: round(v, 3) for k, v in warm.items()},
            }
        )
    except Exception as exc:  # report, then clean up; a benchmark that dies silently helps no one
        import traceback

        traceback.print_exc()
        out.update({"error": f"{type(exc).__name__}: {exc}", "phase": phase, "pass": False})
        if worker_log.exists():
            out["worker_log_tail"] = worker_log.read_text(errors="replace")[-2000:]
    finally:
        stack.teardown(keep=args.keep)
    machine = machine_info("cpu")
    machine["worker_torch_threads"] = args.threads
    out["machine"] = machine
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    emit(out)


class _Rollback(Exception):
    pass


# Statements that only exist because the capture runs inside one outer transaction.
_NESTING = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")


def _sql_floor(run_one_job, *, reps: int) -> dict:
    """What one job's SQL costs PostgreSQL alone: its statements replayed as sent, without Django.

    One job (submit, claim, generation, completion) runs inside a transaction that is rolled back,
    and every statement it sends is captured with its parameters. The captured list is then replayed
    `reps` times through a bare psycopg cursor, each time in a transaction rolled back at the end, with
    the identity sequences the job's later statements refer to (its own id, its samples' ids) set back
    so that every UPDATE and INSERT finds the rows it found the first time. What is left is the time
    the statements take on the wire and in the server: the least a job costs however its Python is
    written, as long as it sends these statements. The three commits are not in it.
    """
    from django.db import connection, transaction
    from psycopg import ClientCursor

    captured: list[tuple[str, object]] = []

    def capture(execute, sql, params, many, context):
        if not many and not sql.lstrip().upper().startswith(_NESTING):
            captured.append((sql, params))
        return execute(sql, params, many, context)

    try:
        with transaction.atomic():
            with connection.execute_wrapper(capture):
                run_one_job()
            # Read inside the transaction: the ids the job took, which its later statements name.
            from inference.models import GenerationJob, Sample

            job = GenerationJob.objects.order_by("-pk").values_list("pk", flat=True)[0]
            samples = list(Sample.objects.filter(job_id=job).order_by("pk").values_list("pk", flat=True))
            raise _Rollback
    except _Rollback:
        pass
    starts = [("inference_generationjob", job)] + ([("inference_sample", samples[0])] if samples else [])
    raw = connection.connection
    totals: list[float] = []
    per_statement: list[list[float]] = [[] for _ in captured]
    for _ in range(reps):
        with raw.transaction(force_rollback=True):
            cursor = ClientCursor(raw)
            for table, first_id in starts:
                cursor.execute(
                    "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s, false)", [table, first_id]
                )  # fmt: skip
            started = time.perf_counter()
            for n, (sql, params) in enumerate(captured):
                t = time.perf_counter()
                cursor.execute(sql, params)
                while cursor.nextset():  # the audit append's lock and head read go as one string
                    pass
                per_statement[n].append(time.perf_counter() - t)
            totals.append(time.perf_counter() - started)
    slowest = sorted(
        ((percentile(times, 50) * 1000, sql) for times, (sql, _) in zip(per_statement, captured, strict=True)),
        reverse=True,
    )
    return {
        "statements": len(captured),
        "replay_ms": summary([t * 1000 for t in totals], digits=2),
        "slowest_p50_ms": [{"ms": round(ms, 2), "sql": " ".join(sql.split())[:90]} for ms, sql in slowest[:5]],
        "note": "one job's statements (submit, claim, completion) replayed raw in PostgreSQL, without its 3 commits",
    }


def _no_enqueue(original):
    def enqueue(job):
        return None

    return enqueue


if __name__ == "__main__":
    main()
