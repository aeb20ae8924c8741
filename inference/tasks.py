"""Celery tasks for generation. Thin: claim by id, call the engine, hand results to services."""

from __future__ import annotations

import contextlib
import logging
import os
import time

from celery import current_app, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init, worker_process_init
from django.conf import settings

from inference import services

logger = logging.getLogger(__name__)


def _generation_queues() -> set[str]:
    return {settings.INFERENCE_DEFAULT_QUEUE, *settings.INFERENCE_CHECKPOINT_QUEUES.values()}


def _serves_generation(sender: object) -> bool:
    """Whether this worker consumes a generation queue; the CPU worker (`default`) never loads torch."""
    queues = current_app.amqp.queues
    consumed = set(queues.consume_from or queues)
    return bool(consumed & _generation_queues())


@worker_init.connect
def _prepare_main_process(sender: object = None, **kwargs: object) -> None:
    # A prefork pool generates in its child processes (worker_process_init below); loading torch in
    # the parent too would only double the memory. Solo and thread pools generate in this process.
    pool = getattr(sender, "pool_cls", None)
    forks = "prefork" in f"{getattr(pool, '__module__', '')}.{getattr(pool, '__name__', pool)}"
    if not forks and _serves_generation(sender):
        prepare_generation()


@worker_process_init.connect
def _prepare_pool_process(sender: object = None, **kwargs: object) -> None:
    if _serves_generation(sender):
        prepare_generation()


def prepare_generation() -> None:
    """Pin torch's CPU threads and import the engine when a worker starts, not in the first job.

    On a shared CPU, torch's default of one thread per core made every decoding step many times
    slower (bench/batching.py); importing torch and transformers takes seconds.
    """
    import torch

    from inference import engine  # noqa: F401  # loads transformers now, not in the first job

    if settings.INFERENCE_TORCH_THREADS:
        torch.set_num_threads(settings.INFERENCE_TORCH_THREADS)
        # Settable once per process; a forked pool child inherits its parent's setting.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
    logger.info("Generation ready in process %d: torch %d thread(s)", os.getpid(), torch.get_num_threads())


@shared_task(bind=True, ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self, job_id: int) -> list[int]:
    """Claim a job (and compatible queued ones) and generate their samples as one batch.

    Claim first: a redelivered message must not generate twice. If the worker dies mid-batch, the
    message is redelivered (reject_on_worker_lost) or the sweeper re-queues the jobs once their lease
    lapses; attempts are counted on the job rows, not in the broker.
    """
    from inference import engine  # torch: only a generation worker ever gets here (prepare_generation)

    worker = self.request.hostname or "worker"
    # Known before claiming, so the claim itself shows where the jobs run (no separate write).
    device = engine.pick_device(settings.INFERENCE_DEVICE or None)
    jobs = services.job_claim_batch(job_id=job_id, worker=worker, device=device)
    if not jobs:
        return []
    runnable = [job for job in jobs if services.job_recheck_access(job=job, worker=worker) is None]
    if runnable:
        _generate(runnable, worker, device=device)
    return [job.pk for job in jobs]


def _generate(jobs: list, worker: str, *, retrying: bool = False, device: str | None = None) -> None:
    """Generate a claimed batch; `device` given means the claim already recorded it on the jobs."""
    from inference import engine  # torch: only a generation worker ever gets here (prepare_generation)

    checkpoint = jobs[0].checkpoint
    by_key = {job.pk: job for job in jobs}
    requests = [
        engine.GenerationRequest(
            key=job.pk,
            prompt=job.prompt,
            params=engine.SamplingParams(
                max_new_tokens=job.max_new_tokens,
                temperature=job.temperature,
                top_k=job.top_k,
                top_p=job.top_p,
                num_samples=job.num_samples,
                seed=job.seed,
            ),
        )
        for job in jobs
    ]
    cancel_poll = _CancelPoll(list(by_key), worker)
    if device is None:
        device = engine.pick_device(settings.INFERENCE_DEVICE or None)
        services.job_mark_device(job_ids=list(by_key), worker=worker, device=device)
    cache = engine.get_default_cache(settings.INFERENCE_MODEL_CACHE_MB * 1024 * 1024)
    started = time.perf_counter()
    try:
        load_started = time.perf_counter()
        cache.get(checkpoint.weights_path, device)
        load_s = time.perf_counter() - load_started
        results = engine.generate(
            checkpoint.weights_path,
            requests,
            device=device,
            cache=cache,
            on_progress=cancel_poll.progress,
            should_cancel=cancel_poll.cancelled,
            progress_interval_s=settings.INFERENCE_PROGRESS_INTERVAL,
        )
    except engine.GenerationOOM:
        # Out of GPU memory: the engine freed what it could. Try once more with half the batch each;
        # a job that still does not fit fails with a clear message and the worker keeps serving.
        if len(jobs) > 1 and not retrying:
            half = len(jobs) // 2
            _generate(jobs[:half], worker, retrying=True, device=device)
            _generate(jobs[half:], worker, retrying=True, device=device)
            return
        for job in jobs:
            services.job_fail(
                job=job,
                worker=worker,
                code="out_of_memory",
                message="The GPU ran out of memory for this job; try fewer samples or fewer new tokens.",
            )
        return
    except SoftTimeLimitExceeded:
        for job in jobs:
            services.job_fail(
                job=job, worker=worker, code="time_limit", message="The job ran past the time limit and was stopped."
            )
        return
    generate_s = time.perf_counter() - started - load_s
    for result in results:
        job = by_key[result.key]
        services.job_complete(
            job=job,
            worker=worker,
            samples=[(s.index, s.text, s.token_count) for s in result.samples],
            prompt_tokens=result.prompt_tokens,
            cancelled=result.cancelled,
            device=device,
            batch_size=len(jobs),
            timings={
                "queued_s": round((job.started_at - job.created_at).total_seconds(), 3),
                "load_s": round(load_s, 3),
                "generate_s": round(generate_s, 3),
            },
        )


class _CancelPoll:
    """Writes progress and reads cancellations at most every half second, not at every step."""

    def __init__(self, job_ids: list[int], worker: str) -> None:
        self.job_ids = job_ids
        self.worker = worker
        self.cancelled_ids: set[int] = set()
        self.last_poll = time.monotonic()
        self.tokens: dict[int, int] = {}

    def progress(self, tokens: dict) -> None:
        self.tokens = dict(tokens)
        self.cancelled_ids = services.job_progress(job_ids=self.job_ids, tokens=self.tokens, worker=self.worker)
        self.last_poll = time.monotonic()

    def cancelled(self) -> set[int]:
        if time.monotonic() - self.last_poll >= settings.INFERENCE_PROGRESS_INTERVAL:
            self.progress(self.tokens)
        return self.cancelled_ids


@shared_task(ignore_result=True)
def sweep_jobs() -> dict[str, list[int]]:
    return services.jobs_sweep()
