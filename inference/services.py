"""Every write to generation jobs: submission and cancellation from people, claims and results from workers."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypedDict

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import Case, F, IntegerField, OuterRef, Q, Subquery, Value, When
from django.db.models.expressions import Combinable
from django.urls import reverse
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from accounts.models import PARTNER_ROLES, NotificationKind, User
from accounts.permissions import require_role
from accounts.services import notifications_send
from agreements.models import AccessGrant
from agreements.selectors import (
    AccessDecision,
    AccessRefused,
    access_check,
    checkpoint_holders,
    overdue_obligation_exists,
)
from agreements.services import access_refusal_log, grants_revoke_for_checkpoint, usage_reserve, usage_settle
from audit import events
from audit.services import AuditEntry, audit_append, audit_append_many
from core.errors import DomainError
from core.tasks import task_send
from inference.models import GenerationJob, Sample, SampleFingerprint
from inference.shingles import fingerprints
from inference.signal import job_finished_on_commit, publish_queued
from inference.tokens import count_prompt_tokens
from models_registry.models import Checkpoint
from models_registry.services import checkpoint_mark_withdrawn

logger = logging.getLogger(__name__)


class Limits(TypedDict):
    prompt_chars: int
    max_new_tokens: tuple[int, int]
    num_samples: tuple[int, int]
    temperature: tuple[float, float]
    top_k: tuple[int, int]
    seed: tuple[int, int]


LIMITS: Limits = {
    "prompt_chars": 4000,
    "max_new_tokens": (1, 512),
    "num_samples": (1, 8),
    "temperature": (0.0, 2.0),
    "top_k": (0, 1000),
    "seed": (0, 2**31 - 1),
}


class IdempotencyConflict(DomainError):
    """The same Idempotency-Key was used before with a different request."""

    status = 409
    code = "idempotency_conflict"

    def __init__(self, job: GenerationJob) -> None:
        super().__init__(
            f"Idempotency-Key was already used for job #{job.pk} with different parameters; use a new key.",
            details={"job": job.pk},
        )
        self.job = job


@dataclass(frozen=True)
class JobParams:
    prompt: str
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    num_samples: int
    seed: int | None

    def fingerprint(self, checkpoint: Checkpoint) -> str:
        payload = {"checkpoint": checkpoint.slug, **self.__dict__}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _in_range(errors: dict[str, str], name: str, value: float | None, low: float, high: float, what: str) -> None:
    if value is None or not low <= value <= high:
        errors[name] = f"{what} must be between {low:,} and {high:,}."


def validate_params(params: JobParams, checkpoint: Checkpoint) -> int:
    """Check every limit with a message per field; returns the prompt's token count."""
    errors: dict[str, str] = {}
    if len(params.prompt) > LIMITS["prompt_chars"]:
        errors["prompt"] = f"The prompt is {len(params.prompt):,} characters; the limit is 4,000."
    _in_range(errors, "max_new_tokens", params.max_new_tokens, *LIMITS["max_new_tokens"], "max_new_tokens")
    _in_range(errors, "num_samples", params.num_samples, *LIMITS["num_samples"], "num_samples")
    _in_range(errors, "temperature", params.temperature, *LIMITS["temperature"], "temperature")
    _in_range(errors, "top_k", params.top_k, *LIMITS["top_k"], "top_k")
    if params.top_p is None or not 0 < params.top_p <= 1:
        errors["top_p"] = "top_p must be above 0 and at most 1."
    if params.seed is not None:
        _in_range(errors, "seed", params.seed, *LIMITS["seed"], "seed")
    if errors:
        raise ValidationError(errors)
    if not checkpoint.has_weights:
        raise ValidationError({"checkpoint": f"{checkpoint.slug} has no weights registered yet; ask the lab."})
    prompt_tokens = count_prompt_tokens(checkpoint.weights_path, params.prompt)
    context = checkpoint.context_length
    if prompt_tokens + params.max_new_tokens > context:
        raise ValidationError(
            {
                # Under the prompt: its length is what the person sees and usually what to change.
                "prompt": (
                    f"The prompt is {prompt_tokens:,} tokens; with {params.max_new_tokens:,} new tokens that exceeds "
                    f"{checkpoint.slug}'s context of {context:,}. Shorten the prompt or ask for fewer tokens."
                )
            }
        )
    return prompt_tokens


def job_submit(
    *,
    actor: User,
    checkpoint: Checkpoint,
    params: JobParams,
    idempotency_key: str | None = None,
) -> GenerationJob:
    """Queue a job, if the organisation's agreement allows it now and the quota has room.

    A refusal creates no job, is audited, and raises AccessRefused. With an Idempotency-Key the same
    request returns the job it made the first time; a different request with that key is a conflict.
    """
    require_role(actor, *PARTNER_ROLES)
    organization = actor.membership.organization
    if idempotency_key is not None:
        idempotency_key = idempotency_key.strip()
        if not 1 <= len(idempotency_key) <= 255:
            raise ValidationError({"idempotency_key": "An Idempotency-Key has 1 to 255 characters."})
        previous = GenerationJob.objects.filter(organization=organization, idempotency_key=idempotency_key).first()
        if previous is not None:
            return _replay(previous, params, checkpoint)
    prompt_tokens = validate_params(params, checkpoint)
    try:
        return _create_job(
            actor=actor,
            checkpoint=checkpoint,
            params=params,
            prompt_tokens=prompt_tokens,
            idempotency_key=idempotency_key,
        )
    except AccessRefused as refused:
        access_refusal_log(actor=actor, organization=organization, checkpoint=checkpoint, decision=refused.decision)
        raise
    except _DuplicateKey:
        previous = GenerationJob.objects.get(organization=organization, idempotency_key=idempotency_key)
        return _replay(previous, params, checkpoint)


class _DuplicateKey(Exception):
    pass


def _replay(previous: GenerationJob, params: JobParams, checkpoint: Checkpoint) -> GenerationJob:
    if previous.request_fingerprint != params.fingerprint(checkpoint):
        raise IdempotencyConflict(previous)
    return previous


@transaction.atomic
def _create_job(
    *, actor: User, checkpoint: Checkpoint, params: JobParams, prompt_tokens: int, idempotency_key: str | None
) -> GenerationJob:
    organization = actor.membership.organization
    # The reservation locks the grant's usage row for today: two submissions at once are checked one
    # after the other, so they cannot both fit into the last of the quota (nor both use one key).
    now = timezone.now()
    decision = usage_reserve(
        organization=organization, checkpoint=checkpoint, tokens=params.max_new_tokens * params.num_samples, now=now
    )
    if not decision.allowed:
        raise AccessRefused(decision)
    assert decision.grant is not None  # an allowed decision names its grant
    if idempotency_key and GenerationJob.objects.filter(organization=organization, idempotency_key=idempotency_key):
        raise _DuplicateKey  # rolls the reservation back with the transaction
    job = GenerationJob.objects.create(
        organization=organization,
        requester=actor,
        checkpoint=checkpoint,
        grant=decision.grant,
        prompt=params.prompt,
        max_new_tokens=params.max_new_tokens,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        num_samples=params.num_samples,
        seed=params.seed,
        idempotency_key=idempotency_key,
        request_fingerprint=params.fingerprint(checkpoint),
        prompt_tokens=prompt_tokens,
        last_enqueued_at=now,
    )
    audit_append(
        actor=actor,
        action=events.JOB_SUBMITTED,
        target=job,
        data={
            "checkpoint": checkpoint.slug,
            "agreement": decision.grant.agreement.reference,
            "max_new_tokens": job.max_new_tokens,
            "num_samples": job.num_samples,
            "prompt_sha256": hashlib.sha256(job.prompt.encode()).hexdigest(),
        },
    )
    enqueue_job(job)
    return job


def queue_for(checkpoint_slug: str) -> str:
    """The broker queue a checkpoint's jobs go to (INFERENCE_CHECKPOINT_QUEUES), `gpu` by default."""
    return settings.INFERENCE_CHECKPOINT_QUEUES.get(checkpoint_slug, settings.INFERENCE_DEFAULT_QUEUE)


# What sending to a broker that is down or unreachable raises: kombu wraps the transport's errors in
# OperationalError; the others are the same failures where they escape that wrapping.
BROKER_ERRORS: tuple[type[Exception], ...] = (KombuOperationalError, RedisError, OSError)


def enqueue_job(job: GenerationJob) -> None:
    """Send the job to its queue once the transaction commits; a broker that is down fails nothing.

    The job row is committed by then and the database is the truth: if the message cannot be sent,
    the failure is logged and the job's `last_enqueued_at` is cleared, which marks it as never sent
    (selectors.job_dispatch_delayed) and has the next sweep (jobs_sweep) send it again. The request
    that submitted it still answers with the job, so a client does not submit it twice.
    """
    queue = queue_for(job.checkpoint.slug)
    transaction.on_commit(lambda: _send_job(job, queue))


def _send_job(job: GenerationJob, queue: str) -> None:
    try:
        # Publishing retries as CELERY_TASK_PUBLISH_RETRY_POLICY says: once, at once, not for seconds.
        # The sender's limits travel in the message and the worker applies them: generation has its
        # own, apart from the CPU worker's tasks (records, email).
        task_send(
            "inference.tasks.run_job",
            job.pk,
            queue=queue,
            soft_time_limit=settings.INFERENCE_SOFT_TIME_LIMIT,
            time_limit=settings.INFERENCE_TIME_LIMIT,
        )
    except BROKER_ERRORS as exc:
        logger.warning(
            "Job #%s is saved but could not be sent to queue %s (%s: %s); the sweeper sends it again.",
            job.pk, queue, type(exc).__name__, exc,
        )  # fmt: skip
        GenerationJob.objects.filter(
            pk=job.pk, status=GenerationJob.Status.QUEUED, last_enqueued_at=job.last_enqueued_at
        ).update(last_enqueued_at=None)
        job.last_enqueued_at = None
        return
    # A batch already decoding on this checkpoint with free rows takes the job in at its next step.
    publish_queued(job.checkpoint_id, job.pk)


@transaction.atomic
def job_cancel(*, actor: User, job: GenerationJob) -> GenerationJob:
    """A queued job never starts; a running one stops within a few decoding steps, keeping its tokens."""
    require_role(actor, *PARTNER_ROLES)
    if job.organization_id != actor.membership.organization_id:
        raise PermissionDenied("Only the job's own organisation can cancel it.")
    job = GenerationJob.objects.select_for_update().get(pk=job.pk)
    now = timezone.now()
    if job.status == GenerationJob.Status.QUEUED:
        job.status = GenerationJob.Status.CANCELLED
        job.finished_at = now
        job.cancel_requested_at = now
        job.error_code = "cancelled"
        job.error_message = f"Cancelled by {actor.email} before it started."
        job.save(update_fields=["status", "finished_at", "cancel_requested_at", "error_code", "error_message"])
        _usage_settle([job])
        job_finished_on_commit(job.pk, job.status)
    elif job.status == GenerationJob.Status.RUNNING:
        if job.cancel_requested_at is None:
            job.cancel_requested_at = now
            job.save(update_fields=["cancel_requested_at"])
    else:
        raise ValidationError(f"Job #{job.pk} already {job.get_status_display().lower()}; there is nothing to cancel.")
    audit_append(actor=actor, action=events.JOB_CANCELLED, target=job, data={"status": job.status})
    if actor.pk != job.requester_id:  # who cancels their own job knows it already
        when = "before it started" if job.status == GenerationJob.Status.CANCELLED else "while it ran; it stops shortly"
        _notify_job_cancelled(job, f"{actor.get_full_name()} ({actor.email}) cancelled your job #{job.pk} {when}.")
    return job


def _notify_job_cancelled(job: GenerationJob, body: str) -> None:
    notifications_send(
        users=[job.requester],
        kind=NotificationKind.JOB_CANCELLED,
        title=f"Job #{job.pk} on {job.checkpoint.slug} was cancelled",
        body=body,
        url=reverse("job_detail", args=[job.pk]),
        dedupe_key=f"job.cancelled:{job.pk}",
    )


def _usage_settle(jobs: list[GenerationJob]) -> None:
    """Jobs ended: the tokens reserved at their submission become what they generated, one settlement
    per grant and day of submission."""
    settlements: dict[tuple[int, date], tuple[AccessGrant, int, int]] = {}
    for job in jobs:
        key = (job.grant_id, job.created_at.astimezone(UTC).date())
        _, reserved, used = settlements.get(key, (job.grant, 0, 0))
        settlements[key] = (job.grant, reserved + job.expected_tokens, used + (job.tokens_generated or 0))
    for (_, day), (grant, reserved, used) in settlements.items():
        usage_settle(grant=grant, day=day, reserved=reserved, used=used)


# --- The kill switch: the highest app it touches orchestrates it ----------------------------------------


@dataclass(frozen=True)
class Withdrawal:
    """What the kill switch did, for the person who pulled it."""

    checkpoint: Checkpoint
    grants_revoked: int
    jobs_cancelled: int
    jobs_stopping: int


@transaction.atomic
def checkpoint_withdraw(*, actor: User, checkpoint: Checkpoint, reason: str) -> Withdrawal:
    """Withdraw a checkpoint, revoke every grant of it and cancel its queued jobs, in one transaction.

    Running jobs are asked to stop (the worker checks between decoding steps); the worker's own
    access check refuses anything that slips past.
    """
    checkpoint, previous = checkpoint_mark_withdrawn(actor=actor, checkpoint=checkpoint, reason=reason)
    reason = checkpoint.status_reason
    revoked = grants_revoke_for_checkpoint(
        checkpoint=checkpoint, actor=actor, reason=f"checkpoint {checkpoint.slug} withdrawn: {reason}"
    )
    now = timezone.now()
    cancelled = []
    # Row by row under a lock: a job a worker claimed a moment ago is running, not queued, and is
    # asked to stop instead.
    queued = GenerationJob.objects.select_for_update().filter(checkpoint=checkpoint, status=GenerationJob.Status.QUEUED)
    for job in queued.select_related("grant", "requester"):
        job.status = GenerationJob.Status.CANCELLED
        job.error_code = "checkpoint_withdrawn"
        job.error_message = f"Checkpoint {checkpoint.slug} was withdrawn: {reason}"
        job.finished_at = now
        job.lease_expires_at = None
        job.save(update_fields=["status", "error_code", "error_message", "finished_at", "lease_expires_at"])
        _usage_settle([job])
        job_finished_on_commit(job.pk, job.status)
        cancelled.append(job.pk)
        _notify_job_cancelled(job, f"Your job #{job.pk} was cancelled before it started: {job.error_message}")
    stopping = GenerationJob.objects.filter(
        checkpoint=checkpoint, status=GenerationJob.Status.RUNNING, cancel_requested_at=None
    ).update(cancel_requested_at=now)
    event = audit_append(
        actor=actor,
        action=events.CHECKPOINT_WITHDRAWN,
        target=checkpoint,
        data={
            "reason": reason,
            "from": previous,
            "grants_revoked": revoked,
            "jobs_cancelled": cancelled,
            "running_jobs_asked_to_stop": stopping,
        },
    )
    notifications_send(
        users=checkpoint_holders(checkpoint=checkpoint, grant_ids=revoked),
        kind=NotificationKind.CHECKPOINT_WITHDRAWN,
        title=f"{checkpoint.slug} was withdrawn: your access to it has ended",
        body=(
            f"The lab withdrew {checkpoint.display_name} ({checkpoint.slug}): {reason}\nYour organisation's "
            "grant for it is revoked and its queued jobs on it are cancelled. Access comes back only through "
            "a new agreement."
        ),
        url=reverse("checkpoint_detail", args=[checkpoint.slug]),
        dedupe_key=f"checkpoint.withdrawn:{checkpoint.pk}:{event.seq}",
    )
    return Withdrawal(
        checkpoint=checkpoint, grants_revoked=len(revoked), jobs_cancelled=len(cancelled), jobs_stopping=stopping
    )


# --- Worker side ---------------------------------------------------------------------------------------


def lease_deadline() -> datetime:
    return timezone.now() + timedelta(seconds=settings.INFERENCE_LEASE_SECONDS)


# Everything the access re-check, generation and the results need, read once with the claim.
_CLAIM_RELATED = ("checkpoint", "organization", "grant__agreement")


def claim_order(now: datetime) -> list[str | Combinable]:
    """The order queued jobs join a batch in: the longest (most new tokens) first, oldest first among
    equals, so a batch's last steps still decode several rows rather than one long job alone (on a
    CPU a step of one row costs a third of a step of eight). A job queued for
    INFERENCE_LONGEST_FIRST_SECONDS is not passed over any more: such jobs go first, oldest first.
    claimed_before says the same as a filter; change both together."""
    wait = settings.INFERENCE_LONGEST_FIRST_SECONDS
    if not wait:
        return ["created_at", "pk"]
    overdue = Q(created_at__lte=now - timedelta(seconds=wait))
    return [
        Case(When(overdue, then=Value(0)), default=Value(1), output_field=IntegerField()),
        Case(When(overdue, then=Value(0)), default=F("max_new_tokens"), output_field=IntegerField()).desc(),
        "created_at",
        "pk",
    ]


def claimed_before(job: GenerationJob, now: datetime) -> Q:
    """Jobs of `job`'s checkpoint that a batch claims before it, if both are queued (claim_order)."""
    older = Q(created_at__lt=job.created_at) | Q(created_at=job.created_at, pk__lt=job.pk)
    wait = settings.INFERENCE_LONGEST_FIRST_SECONDS
    if not wait:
        return older
    cutoff = now - timedelta(seconds=wait)
    overdue = Q(created_at__lte=cutoff)
    if job.created_at <= cutoff:
        return overdue & older
    return overdue | Q(max_new_tokens__gt=job.max_new_tokens) | (Q(max_new_tokens=job.max_new_tokens) & older)


def jobs_claim(
    *, worker: str, device: str, rows: int, job_id: int | None = None, checkpoint_id: int | None = None
) -> list[GenerationJob]:
    """Claim work for a worker with room for `rows` sample rows; returns the jobs it may run now.

    With `job_id`: that job (queued, or running under a lapsed lease, below INFERENCE_MAX_ATTEMPTS),
    even if it alone exceeds `rows` (an empty worker always has room for one job), then queued jobs
    of its checkpoint. Without: queued jobs of `checkpoint_id`. In the order of `claim_order` (the
    longest first, a job queued past INFERENCE_LONGEST_FIRST_SECONDS ahead of them), up to
    INFERENCE_BATCH_MAX_JOBS, stopping at the first that does not fit, so a large job is not passed
    over again and again by smaller ones behind it. [] when `job_id` is not claimable: a redelivered
    message, or another worker took it.

    Each claimed job is re-checked at the choke point (the quota was reserved at submission, so only
    the grant, its agreement and the checkpoint matter); a refused job
    fails (access_denied) and is not returned. The rest come back running, with their checkpoint,
    organization and grant's agreement loaded, ordered by (created_at, pk).
    """
    if job_id is None and checkpoint_id is None:
        raise ValueError("jobs_claim needs a job_id or a checkpoint_id")
    now = timezone.now()
    deadline = lease_deadline()
    queued = Q(status=GenerationJob.Status.QUEUED)
    # Locked (this table's rows only) until the transaction ends; rows another worker is claiming
    # right now are skipped, not waited for.
    # Whether the organisation's access is paused is read with the jobs: the re-check needs no statement
    # of its own unless it is (then it reads the obligation to name it).
    locked = (
        GenerationJob.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related(*_CLAIM_RELATED)
        .annotate(paused=overdue_obligation_exists(organization=OuterRef("organization_id"), now=now))
    )
    with transaction.atomic():
        if job_id is not None:
            lead = (
                Q(pk=job_id, attempts__lt=settings.INFERENCE_MAX_ATTEMPTS)
                & (queued | Q(status=GenerationJob.Status.RUNNING, lease_expires_at__lt=now))
            )  # fmt: skip
            lead_checkpoint = GenerationJob.objects.filter(pk=job_id).values("checkpoint_id")
            lead_first = Case(When(pk=job_id, then=Value(0)), default=Value(1), output_field=IntegerField())
            candidates = locked.filter(lead | (queued & Q(checkpoint_id=Subquery(lead_checkpoint)))).order_by(
                lead_first, *claim_order(now)
            )
        else:
            assert checkpoint_id is not None
            candidates = locked.filter(queued, checkpoint_id=checkpoint_id).order_by(*claim_order(now))
        found = list(candidates[: settings.INFERENCE_BATCH_MAX_JOBS])
        if job_id is not None and (not found or found[0].pk != job_id):
            return []
        paused = {candidate.pk: candidate.paused for candidate in found}
        jobs: list[GenerationJob] = []
        used = 0
        for candidate in found:
            if used + candidate.num_samples > rows and candidate.pk != job_id:
                break
            used += candidate.num_samples
            jobs.append(candidate)
        if not jobs:
            return []
        # The rows are locked and claimable: the UPDATE changes exactly these.
        GenerationJob.objects.filter(pk__in=[job.pk for job in jobs]).update(
            status=GenerationJob.Status.RUNNING,
            worker=worker,
            started_at=now,
            lease_expires_at=deadline,
            progress_tokens=0,
            attempts=F("attempts") + 1,
            device=device,
        )
        jobs.sort(key=lambda job: (job.created_at, job.pk))
        batch = [job.pk for job in jobs]
        for job in jobs:
            job.status, job.worker, job.started_at, job.device = GenerationJob.Status.RUNNING, worker, now, device
            job.lease_expires_at, job.progress_tokens, job.attempts = deadline, 0, job.attempts + 1
        # Each job's own trail shows it started; the batch's starts go into the chain in one INSERT.
        audit_append_many(
            actor=None,
            entries=[
                AuditEntry(
                    action=events.JOB_STARTED,
                    target=job,
                    organization=job.organization,
                    data={"worker": worker, "attempt": job.attempts, "batch": batch},
                )
                for job in jobs
            ],
        )
        # The re-check: one decision per grant serves every job of that grant in the batch.
        decisions: dict[int, AccessDecision] = {}
        runnable = []
        for job in jobs:
            decision = decisions.get(job.grant_id)
            if decision is None:
                decision = access_check(
                    organization=job.organization,
                    checkpoint=job.checkpoint,
                    now=now,
                    check_quota=False,
                    known_grant=job.grant,
                    known_paused=paused[job.pk],
                )
                decisions[job.grant_id] = decision
            if decision.allowed:
                runnable.append(job)
            else:
                _fail_refused(job, worker, decision)
    return runnable


def _fail_refused(job: GenerationJob, worker: str, decision: AccessDecision) -> None:
    access_refusal_log(actor=None, organization=job.organization, checkpoint=job.checkpoint, decision=decision)
    message = decision.message[:1].upper() + decision.message[1:]
    job_fail(job=job, worker=worker, code="access_denied", message=message, device="")  # it never ran anywhere


def job_progress(*, tokens: dict[int, int], worker: str, job_ids: list[int] | None = None) -> set[int]:
    """Record tokens so far for the worker's running jobs and extend their lease, in one statement.

    Returns the ids among them whose cancellation was requested. `job_ids` (jobs with no tokens yet
    count as 0) is for callers that pass the whole batch; by default the jobs are `tokens`' keys. A
    job that is no longer this worker's (the sweeper gave it away) is neither written nor returned.
    """
    ids = list(job_ids) if job_ids is not None else list(tokens)
    if not ids:
        return set()
    table = GenerationJob._meta.db_table
    cases = " ".join("WHEN %s THEN %s" for _ in ids)
    placeholders = ", ".join("%s" for _ in ids)
    params: list[Any] = [value for job_id in ids for value in (job_id, int(tokens.get(job_id, 0)))]
    params += [connection.ops.adapt_datetimefield_value(lease_deadline()), *ids, GenerationJob.Status.RUNNING, worker]
    # A CASE rather than UPDATE ... FROM (VALUES ...): the same statement runs on SQLite in development.
    sql = (
        f"UPDATE {table} SET progress_tokens = CASE id {cases} ELSE progress_tokens END, lease_expires_at = %s "
        f"WHERE id IN ({placeholders}) AND status = %s AND worker = %s "
        "RETURNING id, cancel_requested_at IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {job_id for job_id, cancel_requested in cursor.fetchall() if cancel_requested}


def storable_text(text: str) -> str:
    """Generated text as stored and hashed: PostgreSQL cannot hold NUL, which byte-level BPE can emit."""
    return text.replace("\x00", "\ufffd")


@dataclass(frozen=True)
class JobResult:
    """What a worker hands back for one claimed job when its last sample ends (or it is cancelled).

    `job` is the row as claimed (with its checkpoint, organization and grant); `samples` are
    (index, text, token count); `watermark_scheme` and `watermark_key_id` say how the samples were
    watermarked ("" for none)."""

    job: GenerationJob
    samples: list[tuple[int, str, int]]
    prompt_tokens: int
    cancelled: bool
    batch_size: int
    timings: dict[str, float]
    watermark_scheme: str = ""
    watermark_key_id: str = ""


@transaction.atomic
def jobs_complete(*, results: list[JobResult], worker: str, device: str) -> list[int]:
    """Store the samples, counts and timings of jobs that ended at the same step, in one transaction;
    returns the ids stored. A job that is no longer ours (the sweeper gave it to another worker) is
    skipped: their result counts, not ours. Each job is updated in place.

    Jobs that end together (a batch of equal lengths) share the samples' INSERT, the fingerprints',
    the ledger's settlement per grant and day, and one audit INSERT; each job still gets its own
    conditional UPDATE, its own audit event and its own finished signal."""
    stored: list[JobResult] = []
    hashes: dict[int, list[str]] = {}
    new_samples: list[Sample] = []
    for result in results:
        job = result.job
        samples = [(index, storable_text(text), count) for index, text, count in result.samples]
        tokens = sum(count for _, _, count in samples)
        changes: dict[str, object] = {
            "tokens_generated": tokens,
            "progress_tokens": tokens,
            "prompt_tokens": result.prompt_tokens,
            "status": GenerationJob.Status.CANCELLED if result.cancelled else GenerationJob.Status.SUCCEEDED,
            "finished_at": timezone.now(),
            "device": device,
            "batch_size": result.batch_size,
            "timings": result.timings,
            "lease_expires_at": None,
        }
        if result.cancelled:
            changes["error_code"] = "cancelled"
            changes["error_message"] = f"Cancelled while running; kept the {tokens:,} tokens generated so far."
        # A conditional UPDATE locks the row and says whether the job is still ours, in one statement.
        ours = GenerationJob.objects.filter(
            pk=job.pk, status=GenerationJob.Status.RUNNING, worker=worker, attempts=job.attempts
        ).update(**changes)
        if not ours:
            continue
        for name, value in changes.items():
            setattr(job, name, value)
        stored.append(result)
        hashes[job.pk] = [hashlib.sha256(text.encode()).hexdigest() for _, text, _ in samples]
        key_id = result.watermark_key_id if result.watermark_scheme else ""
        new_samples += [
            Sample(
                job=job,
                index=index,
                text=text,
                token_count=count,
                sha256=sha256,
                watermark_scheme=result.watermark_scheme,
                watermark_key_id=key_id,
            )
            for (index, text, count), sha256 in zip(samples, hashes[job.pk], strict=True)
        ]
    if not stored:
        return []
    samples_index(samples=Sample.objects.bulk_create(new_samples))
    _usage_settle([result.job for result in stored])
    audit_append_many(
        actor=None,
        entries=[
            AuditEntry(
                action=events.JOB_CANCELLED if result.cancelled else events.JOB_SUCCEEDED,
                target=result.job,
                organization=result.job.organization,
                data={
                    "tokens_generated": result.job.tokens_generated,
                    "samples": hashes[result.job.pk],
                    "weights_sha256": result.job.checkpoint.weights_sha256,
                    "device": device,
                    "worker": worker,
                },
            )
            for result in stored
        ],
    )
    for result in stored:
        job_finished_on_commit(result.job.pk, result.job.status)
    return [result.job.pk for result in stored]


@transaction.atomic
def job_fail(*, job: GenerationJob, worker: str | None, code: str, message: str, device: str | None = None) -> bool:
    filters = {"pk": job.pk, "status__in": [GenerationJob.Status.RUNNING, GenerationJob.Status.QUEUED]}
    if worker is not None:
        filters["worker"] = worker
    row = GenerationJob.objects.select_for_update().filter(**filters).first()
    if row is None:
        return False
    row.status = GenerationJob.Status.FAILED
    row.finished_at = timezone.now()
    row.error_code = code
    row.error_message = message
    row.lease_expires_at = None
    fields = ["status", "finished_at", "error_code", "error_message", "lease_expires_at"]
    if device is not None:
        row.device = device
        fields.append("device")
    row.save(update_fields=fields)
    _usage_settle([row])
    audit_append(actor=None, action=events.JOB_FAILED, target=row, organization=row.organization, data={"code": code})
    job_finished_on_commit(row.pk, row.status)
    return True


def jobs_sweep(*, now: datetime | None = None) -> dict[str, list[int]]:
    """The database is the truth: recover jobs whose worker died and jobs whose message was lost."""
    now = now or timezone.now()
    requeued: list[int] = []
    failed: list[int] = []
    resent: list[int] = []
    lapsed = GenerationJob.objects.filter(status=GenerationJob.Status.RUNNING, lease_expires_at__lt=now)
    for job in lapsed.select_related("checkpoint", "organization"):
        with transaction.atomic():
            row = (
                GenerationJob.objects.select_for_update()
                .filter(pk=job.pk, status="running", lease_expires_at__lt=now)
                .first()
            )
            if row is None:
                continue
            if row.attempts >= settings.INFERENCE_MAX_ATTEMPTS:
                job_fail(
                    job=row,
                    worker=None,
                    code="worker_lost",
                    message=f"The worker stopped while running this job {row.attempts} times; giving up.",
                )
                failed.append(row.pk)
                continue
            row.status = GenerationJob.Status.QUEUED
            row.worker = ""
            row.lease_expires_at = None
            row.last_enqueued_at = now
            row.save(update_fields=["status", "worker", "lease_expires_at", "last_enqueued_at"])
            audit_append(
                actor=None, action=events.JOB_REQUEUED, target=row, organization=row.organization,
                data={"attempts": row.attempts},
            )  # fmt: skip
            enqueue_job(row)
            requeued.append(row.pk)
    # Queued jobs whose message was lost (sent long ago, never claimed) or never sent at all (the
    # broker was down when they were submitted: last_enqueued_at is cleared then).
    stale = now - timedelta(seconds=settings.INFERENCE_REQUEUE_AFTER_SECONDS)
    unsent = Q(last_enqueued_at__lt=stale) | Q(last_enqueued_at__isnull=True)
    for job in GenerationJob.objects.filter(unsent, status=GenerationJob.Status.QUEUED).select_related("checkpoint"):
        with transaction.atomic():
            if GenerationJob.objects.filter(unsent, pk=job.pk, status="queued").update(last_enqueued_at=now):
                job.last_enqueued_at = now
                enqueue_job(job)
                resent.append(job.pk)
    return {"requeued": requeued, "failed": failed, "resent": resent}


@transaction.atomic(savepoint=False)  # inside the job's completion: no savepoint round trips
def samples_index(*, samples: list[Sample]) -> int:
    """Add the samples' text fingerprints to the near-duplicate index; returns how many were offered.

    Indexing a sample again adds nothing (the fingerprint is the row's key), so reindexing is safe.
    """
    rows = [SampleFingerprint(sample_id=sample.pk, hash=h) for sample in samples for h in fingerprints(sample.text)]
    SampleFingerprint.objects.bulk_create(rows, batch_size=5000, ignore_conflicts=True)
    return len(rows)
