"""The generation worker's running batch: jobs join between decoding steps and leave as they end.

Only generation workers import this module (it loads torch through the engine). The task that
claims a job keeps decoding on that checkpoint while compatible jobs keep arriving: between steps
it claims queued jobs for the same checkpoint into the free rows (each re-checked by the access
choke point as it is claimed), stores each job the moment its last sample ends, writes progress and
reads cancellations every INFERENCE_PROGRESS_INTERVAL, and stops taking new jobs once it has run for
half the soft time limit, so that it always ends inside it. The database stays the truth: every job
is claimed by a conditional UPDATE and holds a lease the progress writes extend.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import cast

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from inference import engine, provenance, services, watermark
from inference.models import GenerationJob
from inference.signal import QueuedWatch
from models_registry.models import Checkpoint

logger = logging.getLogger(__name__)

OUT_OF_MEMORY = "The GPU ran out of memory for this job; try fewer samples or fewer new tokens."


@dataclass
class _Running:
    job: GenerationJob
    joined: float  # time.perf_counter() when its prefill started
    batch_jobs: int  # jobs decoding together when it joined, itself included
    load_s: float  # loading the checkpoint, for the jobs that waited for it


def _job_id(key: Hashable) -> int:
    return cast(int, key)  # requests are keyed by job id


def job_request(job: GenerationJob) -> engine.GenerationRequest:
    """What the engine is asked for a job: its prompt and sampling parameters, keyed by its id."""
    return engine.GenerationRequest(
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


class BatchRun:
    """Decodes claimed jobs of one checkpoint on this worker until none is left to run."""

    def __init__(self, *, checkpoint: Checkpoint, worker: str, device: str) -> None:
        self.checkpoint = checkpoint
        self.worker = worker
        self.device = device
        self.running: dict[int, _Running] = {}
        self.waiting: list[GenerationJob] = []  # claimed, put aside by an out-of-memory step, to rejoin
        self.load_s = 0.0
        self.loaded_once = False
        self.started = time.monotonic()
        # Taking in jobs for half the soft limit at most leaves the other half to finish them.
        self.join_until = self.started + settings.INFERENCE_SOFT_TIME_LIMIT / 2
        if not settings.INFERENCE_CONTINUOUS_BATCHING:
            self.join_until = self.started  # the batch claimed with the first job is all it runs
        self.batch: engine.RunningBatch | None = None

    def run(self, jobs: list[GenerationJob]) -> list[int]:
        """Run `jobs` (claimed) and those that join; returns the ids of every job this run finished."""
        finished: list[int] = []
        try:
            cache = engine.get_default_cache(settings.INFERENCE_MODEL_CACHE_MB * 1024 * 1024)
            load_started = time.perf_counter()
            # The batch keeps its own reference: evicting the checkpoint from the cache while it
            # runs frees nothing until the batch ends, and changes no output.
            if self.device.startswith("cuda"):  # static KV pool and CUDA graphs, made once per model
                loaded = engine.warm(
                    self.checkpoint.weights_path, self.device, rows=settings.INFERENCE_BATCH_MAX_ROWS, cache=cache
                )
            else:
                loaded = cache.get(self.checkpoint.weights_path, self.device)
            self.load_s = time.perf_counter() - load_started
            self.batch = engine.RunningBatch(
                loaded, max_rows=settings.INFERENCE_BATCH_MAX_ROWS, watermark=provenance.current_key()
            )
            finished += self._admit(jobs)
            watch = QueuedWatch(self.checkpoint.pk) if time.monotonic() < self.join_until else None
            try:
                finished += self._loop(watch)
            finally:
                if watch is not None:
                    watch.close()
        except SoftTimeLimitExceeded:
            for job in [r.job for r in self.running.values()] + self.waiting:
                services.job_fail(
                    job=job,
                    worker=self.worker,
                    code="time_limit",
                    message="The job ran past the time limit and was stopped.",
                )
                finished.append(job.pk)
        return finished

    def _loop(self, watch: QueuedWatch | None) -> list[int]:
        assert self.batch is not None
        batch = self.batch
        finished: list[int] = []
        now = time.monotonic()
        last_progress = last_join = now
        while batch or self.waiting:
            if self.waiting and (batch.room >= self.waiting[0].num_samples or not batch):
                finished += self._admit([self.waiting.pop(0)])
            elif watch is not None and now < self.join_until:
                room = batch.room - sum(job.num_samples for job in self.waiting)
                # Woken by a submission, or looking anyway now and then in case a signal was lost.
                if room > 0 and (watch.arrived() or now - last_join >= settings.INFERENCE_JOIN_POLL_INTERVAL):
                    last_join = now
                    joining = services.jobs_claim(
                        worker=self.worker, device=self.device, rows=room, checkpoint_id=self.checkpoint.pk
                    )
                    finished += self._admit(joining)
            if now - last_progress >= settings.INFERENCE_PROGRESS_INTERVAL:
                last_progress = now
                tokens: dict[int, int] = {job.pk: 0 for job in self.waiting}
                tokens.update((_job_id(key), count) for key, count in batch.progress().items())
                cancelled = services.job_progress(tokens=tokens, worker=self.worker)
                finished += self._store(batch.cancel(cancelled))
                for job in [job for job in self.waiting if job.pk in cancelled]:
                    self.waiting.remove(job)
                    self.running[job.pk] = _Running(job, time.perf_counter(), 0, 0.0)
                    finished += self._store([engine.RequestResult(job.pk, [], job.prompt_tokens, 0, cancelled=True)])
            try:
                finished += self._store(batch.step())
            except engine.GenerationOOM:
                finished += self._out_of_memory()
            now = time.monotonic()
        return finished

    def _admit(self, jobs: list[GenerationJob]) -> list[int]:
        """Prefill claimed jobs into the batch; a job that cannot run at all fails on its own."""
        assert self.batch is not None
        batch = self.batch
        admitted: list[GenerationJob] = []
        failed: list[int] = []
        for job in jobs:
            reason = batch.refusal(job_request(job))
            if reason is None:
                admitted.append(job)
                continue
            # Submission checks the context already; this is a checkpoint replaced under the job.
            message = f"This job does not fit {self.checkpoint.slug}'s context: {reason}."
            services.job_fail(job=job, worker=self.worker, code="context_exceeded", message=message)
            failed.append(job.pk)
        if not admitted:
            return failed
        joined, together = time.perf_counter(), len(batch) + len(admitted)
        load_s = 0.0 if self.loaded_once else self.load_s  # only the first jobs waited for it
        self.loaded_once = True
        try:
            results = batch.add([job_request(job) for job in admitted])
        except engine.GenerationOOM:
            if batch:
                # Room will come as running jobs end; until then no more rows than the batch has now.
                batch.max_rows = max(len(batch.rows), 1)
                self.waiting = admitted + self.waiting
                return failed
            # Alone it still does not fit: try the jobs one at a time, and fail one that cannot run alone.
            if len(admitted) > 1:
                self.waiting = admitted[1:] + self.waiting
                return failed + self._admit(admitted[:1])
            services.job_fail(job=admitted[0], worker=self.worker, code="out_of_memory", message=OUT_OF_MEMORY)
            return [*failed, admitted[0].pk]
        for job in admitted:
            self.running[job.pk] = _Running(job, joined, together, load_s)
        return failed + self._store(results)

    def _out_of_memory(self) -> list[int]:
        """A step ran out of memory: halve the batch, the newest jobs wait; a job alone that fails is failed."""
        assert self.batch is not None
        batch = self.batch
        if len(batch) > 1:
            batch.max_rows = max(len(batch.rows) // 2, 1)
            for request in batch.shed(batch.max_rows):
                self.waiting.insert(0, self.running.pop(_job_id(request.key)).job)
            logger.warning("Out of memory on %s: batch halved to %d rows", self.device, batch.max_rows)
            return []
        [result] = batch.cancel(set(batch.progress()))
        job = self.running.pop(_job_id(result.key)).job
        services.job_fail(job=job, worker=self.worker, code="out_of_memory", message=OUT_OF_MEMORY)
        return [job.pk]

    def _store(self, results: list[engine.RequestResult]) -> list[int]:
        """Store the jobs that ended at this step, together (services.jobs_complete)."""
        if not results:
            return []
        done = time.perf_counter()
        finished: list[services.JobResult] = []
        for result in results:
            running = self.running.pop(_job_id(result.key))
            job = running.job
            # A job's samples share its temperature: all carry the watermark, or (greedy) none does.
            watermarked = bool(result.samples) and all(s.watermarked for s in result.samples)
            queued_s = (job.started_at - job.created_at).total_seconds() if job.started_at else 0.0
            finished.append(
                services.JobResult(
                    job=job,
                    samples=[(s.index, s.text, s.token_count) for s in result.samples],
                    prompt_tokens=result.prompt_tokens,
                    cancelled=result.cancelled,
                    batch_size=running.batch_jobs,
                    timings={
                        "queued_s": round(queued_s, 3),
                        "load_s": round(running.load_s, 3),
                        "generate_s": round(done - running.joined, 3),
                    },
                    watermark_scheme=watermark.SCHEME if watermarked else "",
                    watermark_key_id=provenance.current_key().key_id if watermarked else "",
                )
            )
        services.jobs_complete(results=finished, worker=self.worker, device=self.device)
        return [_job_id(result.key) for result in results]
