"""Every read of checkpoints, access requests and grants, and the access choke point.

`access_check` is the one place that decides whether an organisation may use a checkpoint now.
Job submission calls it, and the worker calls it again right before generating, so a revocation
reaches queued jobs too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from django.db.models import Case, F, IntegerField, Prefetch, Q, QuerySet, Sum, When
from django.db.models.functions import Coalesce
from django.http import Http404
from django.utils import timezone

from accounts.models import LAB_ROLES, PARTNER_ROLES, Organization, Role, User
from accounts.permissions import require_role, role_of
from agreements.models import Agreement
from inference.models import GenerationJob
from models_registry.models import AccessGrant, AccessRequest, Checkpoint

# Who decides on access requests (approve into an amendment, or reject).
REQUEST_REVIEWERS = (Role.LAB_ADMIN, Role.LEGAL)
# Agreements that may still become active, and so explain "not yet".
_PENDING_AGREEMENT = (Agreement.Status.DRAFT, Agreement.Status.OUT_FOR_SIGNATURE, Agreement.Status.PARTNER_SIGNED)


# --- The access choke point ------------------------------------------------------------------------


@dataclass(frozen=True)
class AccessDecision:
    """Whether an organisation may use a checkpoint now; a refusal names its cause.

    `code` is stable for programs (API error codes, tests); `message` is for people.
    """

    allowed: bool
    grant: AccessGrant | None
    code: str
    message: str
    quota_left: int | None = None


def quota_reset_at(now: datetime) -> datetime:
    """Quotas are per UTC day: the next midnight UTC."""
    return _day_start(now) + timedelta(days=1)


def _day_start(now: datetime) -> datetime:
    return datetime.combine(now.astimezone(UTC).date(), time.min, tzinfo=UTC)


def tokens_used_today(
    *,
    organization: Organization,
    checkpoint: Checkpoint,
    now: datetime | None = None,
    exclude_job_id: int | None = None,
) -> int:
    """Tokens charged today (UTC) against an organisation's use of a checkpoint.

    A job still queued or running reserves everything it may generate; a finished one counts what
    it generated. This mirrors GenerationJob.charged_tokens, in SQL.
    """
    now = now or timezone.now()
    start = _day_start(now)
    jobs = GenerationJob.objects.filter(
        organization=organization,
        checkpoint=checkpoint,
        created_at__gte=start,
        created_at__lt=start + timedelta(days=1),
    )
    if exclude_job_id is not None:
        jobs = jobs.exclude(pk=exclude_job_id)
    charged = Case(
        When(status__in=GenerationJob.FINISHED, then=F("tokens_generated")),
        default=F("max_new_tokens") * F("num_samples"),
        output_field=IntegerField(),
    )
    return jobs.aggregate(used=Coalesce(Sum(charged), 0))["used"]


def access_check(
    *,
    organization: Organization,
    checkpoint: Checkpoint,
    tokens: int = 0,
    now: datetime | None = None,
    exclude_job_id: int | None = None,
    check_quota: bool = True,
) -> AccessDecision:
    """May `organization` use `checkpoint` now for up to `tokens` more tokens?

    Checks, in order: the checkpoint's status (a kill switch beats any agreement), a live grant
    from an active agreement (term checked here, not only by the hourly sweep), and the daily
    token quota. `exclude_job_id` lets the worker re-check a queued job without counting that
    job's own reservation against it. Callers audit refusals with services.access_refusal_record.
    """
    now = now or timezone.now()
    slug = checkpoint.slug
    if checkpoint.status == Checkpoint.Status.WITHDRAWN:
        return _refuse("withdrawn", f"checkpoint {slug} is withdrawn{_reason(checkpoint.status_reason)}")
    if checkpoint.status == Checkpoint.Status.EMBARGOED:
        return _refuse("embargoed", f"checkpoint {slug} is embargoed{_reason(checkpoint.status_reason)}")

    grants = list(
        AccessGrant.objects.filter(organization=organization, checkpoint=checkpoint)
        .select_related("agreement")
        .order_by("-created_at", "-pk")
    )
    live = [g for g in grants if g.is_live(now) and g.agreement.status == Agreement.Status.ACTIVE]
    if not live:
        return _explain_no_grant(organization=organization, checkpoint=checkpoint, grants=grants, now=now)
    # Several live grants (an amendment that adds to, not replaces, an agreement): the most generous.
    grant = max(live, key=lambda g: (g.daily_token_quota, g.ends_at))
    if not check_quota:
        # The worker re-checks a job whose tokens were reserved at submission: only the grant matters.
        return AccessDecision(allowed=True, grant=grant, code="ok", message=f"{slug} may be used", quota_left=None)

    used = tokens_used_today(organization=organization, checkpoint=checkpoint, now=now, exclude_job_id=exclude_job_id)
    quota = grant.daily_token_quota
    left = max(quota - used, 0)
    if left == 0:
        return AccessDecision(
            allowed=False,
            grant=grant,
            code="quota_exceeded",
            message=f"daily token quota of {quota:,} used; resets at 00:00 UTC",
            quota_left=0,
        )
    if tokens > left:
        return AccessDecision(
            allowed=False,
            grant=grant,
            code="quota_exceeded",
            message=(
                f"this needs up to {tokens:,} tokens but {left:,} of the daily token quota of {quota:,} are left; "
                f"resets at 00:00 UTC"
            ),
            quota_left=left,
        )
    return AccessDecision(
        allowed=True,
        grant=grant,
        code="ok",
        message=f"{slug} may be used until {grant.ends_at:%Y-%m-%d %H:%M} UTC under {grant.agreement.reference}",
        quota_left=left,
    )


def _refuse(code: str, message: str, grant: AccessGrant | None = None) -> AccessDecision:
    return AccessDecision(allowed=False, grant=grant, code=code, message=message)


def _reason(text: str) -> str:
    return f": {text}" if text else ""


def _explain_no_grant(
    *, organization: Organization, checkpoint: Checkpoint, grants: list[AccessGrant], now: datetime
) -> AccessDecision:
    """Name what is missing, from the organisation's most recent grant of this checkpoint."""
    slug = checkpoint.slug
    if grants:
        grant = grants[0]
        agreement = grant.agreement
        reference = agreement.reference
        if agreement.status == Agreement.Status.SUPERSEDED:
            successor = agreement.amendments.filter(status=Agreement.Status.ACTIVE).order_by("-activated_at").first()
            by = f" by {successor.reference}, which does not grant it" if successor else ""
            return _refuse("superseded", f"agreement {reference} that granted {slug} was superseded{by}", grant)
        if agreement.status == Agreement.Status.TERMINATED:
            return _refuse("terminated", f"agreement {reference} that granted {slug} was terminated", grant)
        if agreement.status == Agreement.Status.EXPIRED or (grant.revoked_at is None and grant.ends_at <= now):
            return _refuse(
                "expired", f"access to {slug} under {reference} expired on {grant.ends_at:%Y-%m-%d} (UTC)", grant
            )
        if grant.revoked_at is not None:
            return _refuse(
                "revoked", f"access to {slug} under {reference} was revoked{_reason(grant.revoke_reason)}", grant
            )
        if grant.starts_at > now:
            starts = f"{grant.starts_at:%Y-%m-%d}"
            return _refuse("not_yet_active", f"access to {slug} under {reference} starts on {starts} (UTC)", grant)
        if agreement.status != Agreement.Status.ACTIVE:
            return _refuse(
                "not_yet_active", f"agreement {reference} granting {slug} is {agreement.get_status_display().lower()}"
            )
    pending = (
        Agreement.objects.filter(organization=organization, checkpoints=checkpoint, status__in=_PENDING_AGREEMENT)
        .order_by("-created_at")
        .first()
    )
    if pending is not None:
        return _refuse(
            "not_yet_active",
            f"agreement {pending.reference} granting {slug} is {pending.get_status_display().lower()}, not yet active",
        )
    return _refuse("no_agreement", f"no active agreement grants {slug}")


# --- Checkpoints ----------------------------------------------------------------------------------


def live_grants_q(now: datetime, prefix: str = "") -> Q:
    """Grants in force now: not revoked, within their term, from an active agreement."""
    return Q(
        **{
            f"{prefix}revoked_at": None,
            f"{prefix}starts_at__lte": now,
            f"{prefix}ends_at__gt": now,
            f"{prefix}agreement__status": Agreement.Status.ACTIVE,
        }
    )


def checkpoint_list(*, user: User) -> QuerySet[Checkpoint]:
    """The registry, smallest first. Lab staff get `live_grants` (with organisations) on each row."""
    role = role_of(user)
    if role is None:
        raise Http404
    checkpoints = Checkpoint.objects.order_by("parameter_count")
    if role in LAB_ROLES:
        live = AccessGrant.objects.filter(live_grants_q(timezone.now())).select_related("organization")
        checkpoints = checkpoints.prefetch_related(
            Prefetch("grants", queryset=live.order_by("organization__name"), to_attr="live_grants")
        )
    return checkpoints


def checkpoint_get(*, user: User, slug: str) -> Checkpoint:
    """One checkpoint's registry page: lab staff only."""
    require_role(user, *LAB_ROLES)
    checkpoint = Checkpoint.objects.filter(slug=slug).first()
    if checkpoint is None:
        raise Http404
    return checkpoint


def grant_list_for_checkpoint(*, user: User, checkpoint: Checkpoint) -> QuerySet[AccessGrant]:
    """Every grant ever made for a checkpoint, newest first (lab staff)."""
    require_role(user, *LAB_ROLES)
    return (
        AccessGrant.objects.filter(checkpoint=checkpoint)
        .select_related("organization", "agreement")
        .order_by("-created_at", "-pk")
    )


def grant_list(*, user: User) -> QuerySet[AccessGrant]:
    """Every grant, live or ended, newest first: partners their organisation's, lab staff all."""
    role = role_of(user)
    if role is None:
        raise Http404
    grants = AccessGrant.objects.select_related("organization", "checkpoint", "agreement")
    if role in PARTNER_ROLES:
        grants = grants.filter(organization_id=user.membership.organization_id)
    return grants.order_by("-created_at", "-pk")


def live_grant_list(*, organization: Organization, now: datetime | None = None) -> QuerySet[AccessGrant]:
    """An organisation's grants in force now, for the reviewer's side panel and the home page."""
    now = now or timezone.now()
    return (
        AccessGrant.objects.filter(live_grants_q(now), organization=organization)
        .select_related("checkpoint", "agreement")
        .order_by("checkpoint__parameter_count")
    )


@dataclass(frozen=True)
class PartnerCheckpoint:
    """One row of a partner's view of the registry."""

    checkpoint: Checkpoint
    decision: AccessDecision
    pending_request: AccessRequest | None

    @property
    def usable(self) -> bool:
        return self.decision.allowed or self.decision.code == "quota_exceeded"

    @property
    def requestable(self) -> bool:
        return (
            self.checkpoint.status == Checkpoint.Status.AVAILABLE
            and not self.usable
            and self.pending_request is None
            and self.decision.code != "not_yet_active"
        )


def partner_checkpoint_overview(*, user: User, now: datetime | None = None) -> list[PartnerCheckpoint]:
    """What a partner user's organisation can use now (until when, quota left) and can request."""
    require_role(user, *PARTNER_ROLES)
    organization = user.membership.organization
    now = now or timezone.now()
    pending: dict[int, AccessRequest] = {}
    requests = AccessRequest.objects.filter(organization=organization, status=AccessRequest.Status.PENDING)
    for access_request in requests.prefetch_related("checkpoints").order_by("created_at"):
        for checkpoint in access_request.checkpoints.all():
            pending.setdefault(checkpoint.pk, access_request)
    return [
        PartnerCheckpoint(
            checkpoint=checkpoint,
            decision=access_check(organization=organization, checkpoint=checkpoint, now=now),
            pending_request=pending.get(checkpoint.pk),
        )
        for checkpoint in Checkpoint.objects.order_by("parameter_count")
    ]


# --- Access requests --------------------------------------------------------------------------------


def access_request_list(*, user: User, status: str | None = None) -> QuerySet[AccessRequest]:
    """Partners see their organisation's requests; lab staff see every organisation's."""
    role = role_of(user)
    if role is None:
        raise Http404
    requests = AccessRequest.objects.select_related("organization", "requester", "decided_by", "amendment")
    by_size = Checkpoint.objects.order_by("parameter_count")
    requests = requests.prefetch_related(Prefetch("checkpoints", queryset=by_size))
    if role in PARTNER_ROLES:
        requests = requests.filter(organization_id=user.membership.organization_id)
    if status:
        requests = requests.filter(status=status)
    return requests.order_by("-created_at", "-pk")


def access_request_get(*, user: User, pk: int) -> AccessRequest:
    """One request; another organisation's is 404."""
    access_request = access_request_list(user=user).filter(pk=pk).first()
    if access_request is None:
        raise Http404
    return access_request


def access_request_review_queue(*, user: User) -> QuerySet[AccessRequest]:
    """Pending requests, oldest first, for legal and lab admins (auditors may read it)."""
    require_role(user, *LAB_ROLES)
    return access_request_list(user=user, status=AccessRequest.Status.PENDING).order_by("created_at", "pk")


def organization_live_grants(*, organization_ids: list[int], now: datetime | None = None) -> dict[int, list]:
    """Live grants per organisation in one query, for the review queue's "current grants" column."""
    now = now or timezone.now()
    grants: dict[int, list[AccessGrant]] = {pk: [] for pk in organization_ids}
    for grant in (
        AccessGrant.objects.filter(live_grants_q(now), organization_id__in=organization_ids)
        .select_related("checkpoint", "agreement")
        .order_by("checkpoint__parameter_count")
    ):
        grants[grant.organization_id].append(grant)
    return grants


# --- Home page ----------------------------------------------------------------------------------------


def home_panels(user: User) -> dict[str, object]:
    """Live content for the persona home pages (accounts.views.home adds it to the context)."""
    role = role_of(user)
    if role in PARTNER_ROLES:
        rows = partner_checkpoint_overview(user=user)
        return {
            "usable_checkpoints": [row for row in rows if row.usable],
            "requestable_checkpoints": [row for row in rows if row.requestable],
            "pending_checkpoints": [row for row in rows if row.pending_request and not row.usable],
        }
    panels: dict[str, object] = {}
    if role == Role.LAB_ADMIN:
        checkpoints = list(checkpoint_list(user=user))
        for checkpoint in checkpoints:
            checkpoint.live_organizations = sorted({grant.organization.name for grant in checkpoint.live_grants})
        panels["registry"] = checkpoints
    if role in REQUEST_REVIEWERS:
        queue = access_request_review_queue(user=user)
        panels["pending_request_count"] = queue.count()
        panels["oldest_pending_request"] = queue.first()
    return panels


# --- Weights on disk -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsCheck:
    """The registered weights of one checkpoint compared with the file on disk now."""

    checkpoint: Checkpoint
    ok: bool
    found_sha256: str
    problem: str = ""


def checkpoint_weights_check(checkpoint: Checkpoint) -> WeightsCheck:
    """Re-hash a checkpoint's registered weights file; any difference is drift."""
    from models_registry.weights import WEIGHTS_FILE, file_sha256

    path = Path(checkpoint.weights_path) / WEIGHTS_FILE
    try:
        found = file_sha256(path)
    except OSError as exc:
        return WeightsCheck(checkpoint, ok=False, found_sha256="", problem=f"{path} cannot be read: {exc.strerror}")
    if found != checkpoint.weights_sha256:
        return WeightsCheck(
            checkpoint,
            ok=False,
            found_sha256=found,
            problem=f"{path} has SHA-256 {found}, but {checkpoint.weights_sha256} is registered",
        )
    return WeightsCheck(checkpoint, ok=True, found_sha256=found)
