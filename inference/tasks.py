"""Celery tasks for generation. Thin: claim by id, call the engine, hand results to services."""

from __future__ import annotations

import contextlib
import logging
import os
import time

from celery import current_app, shared_task
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

    from inference import engine  # loads transformers now, not in the first job

    if settings.INFERENCE_TORCH_THREADS:
        torch.set_num_threads(settings.INFERENCE_TORCH_THREADS)
        # Settable once per process; a forked pool child inherits its parent's setting.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
    logger.info("Generation ready in process %d: torch %d thread(s)", os.getpid(), torch.get_num_threads())
    device = engine.pick_device(settings.INFERENCE_DEVICE or None)
    if device.startswith("cuda") and settings.INFERENCE_WARM_CHECKPOINTS:
        _warm(device, settings.INFERENCE_WARM_CHECKPOINTS)


def _warm(device: str, slugs: list[str]) -> None:
    """Load these checkpoints and capture their decode graphs now, so the first jobs do not wait for it."""
    from django.core.exceptions import ValidationError

    from inference import engine
    from models_registry.selectors import checkpoints_by_slug

    try:
        checkpoints = checkpoints_by_slug(slugs)
    except ValidationError as exc:  # a typo in the setting must not stop the worker serving
        logger.warning("INFERENCE_WARM_CHECKPOINTS: %s", " ".join(exc.messages))
        return
    cache = engine.get_default_cache(settings.INFERENCE_MODEL_CACHE_MB * 1024 * 1024)
    for checkpoint in checkpoints:
        if not checkpoint.has_weights:
            continue
        started = time.perf_counter()
        engine.warm(checkpoint.weights_path, device, rows=settings.INFERENCE_BATCH_MAX_ROWS, cache=cache)
        logger.info("Warmed %s on %s in %.1f s", checkpoint.slug, device, time.perf_counter() - started)


@shared_task(bind=True, ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self, job_id: int) -> list[int]:
    """Claim a job (and compatible queued ones) and decode them, taking in more as rows free up.

    Claim first: a redelivered message, or the message of a job a running batch already took in,
    finds nothing to claim and runs nothing twice. If the worker dies mid-batch, the message is
    redelivered (reject_on_worker_lost) or the sweeper re-queues the jobs once their lease lapses;
    attempts are counted on the job rows, not in the broker.
    """
    from inference import engine  # torch: only a generation worker ever gets here (prepare_generation)
    from inference.worker import BatchRun

    worker = self.request.hostname or "worker"
    # Known before claiming, so the claim itself shows where the jobs run (no separate write).
    device = engine.pick_device(settings.INFERENCE_DEVICE or None)
    jobs = services.jobs_claim(worker=worker, device=device, rows=settings.INFERENCE_BATCH_MAX_ROWS, job_id=job_id)
    if not jobs:
        return []
    return BatchRun(checkpoint=jobs[0].checkpoint, worker=worker, device=device).run(jobs)


@shared_task(ignore_result=True)
def sweep_jobs() -> dict[str, list[int]]:
    return services.jobs_sweep()
