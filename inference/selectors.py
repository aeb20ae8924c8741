"""Every read of generation jobs, scoped at one point: partners see their organisation's, lab staff all."""

from __future__ import annotations

import math
from dataclasses import dataclass

import django_filters
from django.conf import settings
from django.db.models import Count, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from accounts.models import LAB_ROLES, PARTNER_ROLES, User
from accounts.permissions import role_of
from agreements.selectors import PartnerCheckpoint, partner_checkpoint_overview
from core.filters import CreatedRangeFilterSet
from inference.models import GenerationJob, Sample, SampleFingerprint
from inference.services import claimed_before, queue_for
from inference.shingles import fingerprints
from models_registry.models import Checkpoint


def job_list(*, user: User) -> QuerySet[GenerationJob]:
    """Newest first. One query per page however many jobs there are: every row's relations are joined.

    The list's filters (JobFilter) narrow this, on the jobs page and in the API alike."""
    role = role_of(user)
    if role is None:
        raise Http404
    jobs = GenerationJob.objects.select_related("checkpoint", "requester", "organization", "grant__agreement")
    if role in PARTNER_ROLES:
        jobs = jobs.filter(organization_id=user.membership.organization_id)
    elif role not in LAB_ROLES:
        raise Http404
    return jobs.order_by("-created_at", "-pk")


class JobFilter(CreatedRangeFilterSet):
    """The job list's filters: the jobs page's form and GET /api/v1/jobs/'s query parameters."""

    status = django_filters.ChoiceFilter(
        choices=GenerationJob.Status.choices,
        empty_label="All statuses",
        error_messages={"invalid_choice": "Choose a status from the list."},
    )
    checkpoint = django_filters.ModelChoiceFilter(
        queryset=Checkpoint.objects.order_by("parameter_count"),
        to_field_name="slug",
        empty_label="All checkpoints",
        label="Checkpoint",
        help_text="A checkpoint slug, e.g. gpt2.",
        error_messages={"invalid_choice": "Choose a checkpoint from the list."},
    )

    class Meta:
        model = GenerationJob
        fields = ["status", "checkpoint", "created_after", "created_before"]


def job_get(*, user: User, pk: int, with_samples: bool = False) -> GenerationJob:
    """One job; another organisation's is 404, the same as one that does not exist."""
    jobs = job_list(user=user)
    if with_samples:
        jobs = jobs.prefetch_related("samples")
    job = jobs.filter(pk=pk).first()
    if job is None:
        raise Http404
    return job


def job_can_cancel(*, user: User, job: GenerationJob) -> bool:
    """Only the job's own organisation cancels, and only before it finishes; lab staff only read."""
    return (
        role_of(user) in PARTNER_ROLES
        and job.organization_id == user.membership.organization_id
        and not job.is_finished
    )


def job_submit_offered(*, user: User, checkpoint: Checkpoint | None = None) -> bool:
    """Whether to offer `user` a new job (on `checkpoint`, or on any): a partner whose organisation may
    use it now. A used-up daily quota still offers it (the form says when it resets); the access choke
    point decides again at submission."""
    if role_of(user) not in PARTNER_ROLES:
        return False
    rows = partner_checkpoint_overview(user=user)
    return any(row.usable for row in rows if checkpoint is None or row.checkpoint.pk == checkpoint.pk)


def job_dispatch_delayed(job: GenerationJob) -> bool:
    """Queued, but its message never reached the broker (it was down): the sweeper sends it again."""
    return job.status == GenerationJob.Status.QUEUED and job.last_enqueued_at is None


def job_queue_position(job: GenerationJob) -> int | None:
    """1 for the next job its queue will start; None unless queued.

    Counts queued jobs of every organisation on the same broker queue (checkpoints routed together)
    that start before this one: of its own checkpoint, those a running batch claims first (the
    longer ones, see services.claimed_before); of the others, those created before it, the order
    their messages reach the worker. Only the number is shown.
    """
    if job.status != GenerationJob.Status.QUEUED:
        return None
    queue = queue_for(job.checkpoint.slug)
    routed_elsewhere = [slug for slug, q in settings.INFERENCE_CHECKPOINT_QUEUES.items() if q != queue]
    if queue == settings.INFERENCE_DEFAULT_QUEUE:
        same_queue = ~Q(checkpoint__slug__in=routed_elsewhere)
    else:
        same_queue = Q(checkpoint__slug__in=[s for s, q in settings.INFERENCE_CHECKPOINT_QUEUES.items() if q == queue])
    earlier = Q(created_at__lt=job.created_at) | Q(created_at=job.created_at, pk__lt=job.pk)
    before = (Q(checkpoint=job.checkpoint_id) & claimed_before(job, timezone.now())) | (
        ~Q(checkpoint=job.checkpoint_id) & earlier
    )
    ahead = GenerationJob.objects.filter(same_queue, before, status=GenerationJob.Status.QUEUED).count()
    return ahead + 1


def job_samples(job: GenerationJob) -> list[Sample]:
    return sorted(job.samples.all(), key=lambda sample: sample.index)


@dataclass(frozen=True)
class JobCheckpoints:
    """What the job form may offer: the checkpoints usable now, and why each other one is not."""

    usable: list[PartnerCheckpoint]
    refused: list[PartnerCheckpoint]


def job_checkpoint_options(*, user: User) -> JobCheckpoints:
    """Asks the access choke point about every checkpoint for the user's organisation (partners only).

    A checkpoint whose quota is used up today stays on offer: submitting says so, with when it resets.
    """
    rows = partner_checkpoint_overview(user=user)
    return JobCheckpoints(
        usable=[row for row in rows if row.usable],
        refused=[row for row in rows if not row.usable],
    )


def job_home(*, user: User) -> dict[str, object]:
    """The partner home page's jobs card: the organisation's five latest jobs."""
    if role_of(user) not in PARTNER_ROLES:
        return {}
    return {"recent_jobs": list(job_list(user=user)[:5])}


# Evidence a match needs: shared fingerprints, and the share of the passage's fingerprints they are.
# A cut passage with one word in ten replaced keeps about two thirds of its fingerprints; unrelated
# text shares at most a stray common phrase.
MATCH_MIN_SHARED = 3
MATCH_MIN_OVERLAP = 0.2


@dataclass(frozen=True)
class SampleMatch:
    sample_id: int
    shared: int  # fingerprints the passage and the sample have in common
    query: int  # fingerprints of the passage
    overlap: float  # shared / query, 0..1


def sample_matches(*, text: str, limit: int = 10, organization_id: int | None = None) -> list[SampleMatch]:
    """Stored samples the text was probably cut from (near-duplicates), most shared first.

    With `organization_id`, only that organisation's samples (so its own matches are never crowded
    out by others'); without, every organisation's: the caller decides what it may disclose.
    """
    query = fingerprints(text)
    if len(query) < MATCH_MIN_SHARED:
        return []
    needed = max(MATCH_MIN_SHARED, math.ceil(MATCH_MIN_OVERLAP * len(query)))
    found = SampleFingerprint.objects.filter(hash__in=query)
    if organization_id is not None:
        found = found.filter(sample__job__organization_id=organization_id)
    rows = (
        found.values("sample_id")
        .annotate(shared=Count("*"))
        .filter(shared__gte=needed)
        .order_by("-shared", "sample_id")[:limit]
    )
    return [
        SampleMatch(
            sample_id=row["sample_id"], shared=row["shared"], query=len(query), overlap=row["shared"] / len(query)
        )
        for row in rows
    ]
