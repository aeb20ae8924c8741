"""Stage reviews: the evidence a release decision on one checkpoint rests on, for lab staff.

Findings and incidents come from research's own models; obligations, grants and the usage ledger from
agreements; jobs from inference. Every number is counted or summed in the database, so a review costs
the same dozen queries however many days, jobs or findings lie behind it (tests/research checks).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db.models import Count, F, Prefetch, Q, QuerySet, Sum
from django.db.models.functions import TruncWeek
from django.http import Http404
from django.utils import timezone

from accounts.models import LAB_ROLES, Organization, Role, User
from accounts.permissions import role_of
from agreements.models import AccessGrant, Agreement, GrantUsage, Obligation
from agreements.selectors import organizations_in_good_standing, pausing_overdue_q
from audit import events
from audit.models import AuditEvent
from core.time import day_end, day_start
from inference.models import GenerationJob
from models_registry.models import Checkpoint
from research.models import Finding, Incident, ReleaseDecision

# Lab staff read stage reviews; only lab admins decide. Partners never learn a review exists (404).
STAGE_REVIEWERS = LAB_ROLES
RELEASE_DECIDERS = (Role.LAB_ADMIN,)
WINDOW_WEEKS = 8

OBLIGATION_COLUMNS = ("fulfilled", "fulfilled_late", "overdue", "open", "waived")
OBLIGATION_LABELS = {
    "fulfilled": "Fulfilled on time",
    "fulfilled_late": "Fulfilled late",
    "overdue": "Overdue",
    "open": "Open",
    "waived": "Waived",
}


def _require_reviewer(user: User) -> None:
    # Partners (and people without a role) are told nothing: not even that the page exists.
    if role_of(user) not in STAGE_REVIEWERS:
        raise Http404


def stage_review_checkpoint(*, user: User, slug: str) -> Checkpoint:
    """The checkpoint a stage review is about; 404 for partners and for an unknown slug."""
    _require_reviewer(user)
    checkpoint = Checkpoint.objects.filter(slug=slug).first()
    if checkpoint is None:
        raise Http404
    return checkpoint


def release_decision_list(*, user: User, checkpoint: Checkpoint) -> list[ReleaseDecision]:
    """A checkpoint's decisions, newest first, with who decided and what they drafted (lab staff)."""
    _require_reviewer(user)
    return list(_decisions().filter(checkpoint=checkpoint).order_by("-decided_at", "-pk"))


def release_decision_latest(*, checkpoint: Checkpoint) -> ReleaseDecision | None:
    """The decision in force: the one no later decision supersedes."""
    return (
        ReleaseDecision.objects.filter(checkpoint=checkpoint, superseded_by__isnull=True)
        .order_by("-decided_at", "-pk")
        .first()
    )


def release_decision_of(*, checkpoint: Checkpoint, pk: int) -> ReleaseDecision | None:
    """The checkpoint's decision `pk` (the one a page showed as latest), or None when it is not one of its."""
    return ReleaseDecision.objects.filter(checkpoint=checkpoint, pk=pk).first()


def release_decision_effects(decision: ReleaseDecision) -> dict[str, Any]:
    """What a decision did, as its RELEASE_DECIDED audit event states it (amendments, partners skipped and why)."""
    event = AuditEvent.objects.filter(
        action=events.RELEASE_DECIDED, target_type="research.releasedecision", target_id=str(decision.pk)
    ).first()
    return dict(event.data) if event is not None and event.data else {}


def _decisions() -> QuerySet[ReleaseDecision]:
    return ReleaseDecision.objects.select_related("checkpoint", "decided_by", "supersedes").prefetch_related(
        Prefetch("partners", queryset=Organization.objects.order_by("name")),
        Prefetch("amendments", queryset=Agreement.objects.select_related("organization").order_by("pk")),
    )


def stage_review_index(*, user: User) -> list[tuple[Checkpoint, ReleaseDecision | None]]:
    """Every checkpoint, smallest first, with the decision in force on it (two queries)."""
    _require_reviewer(user)
    checkpoints = list(Checkpoint.objects.order_by("parameter_count"))
    latest: dict[int, ReleaseDecision] = {}
    heads = ReleaseDecision.objects.filter(superseded_by__isnull=True).select_related("decided_by")
    for decision in heads.order_by("decided_at", "pk"):
        latest[decision.checkpoint_id] = decision
    return [(checkpoint, latest.get(checkpoint.pk)) for checkpoint in checkpoints]


# --- The evidence -------------------------------------------------------------------------------------


@dataclass
class PartnerEvidence:
    """One partner's part of a stage review."""

    organization: Organization
    good_standing: bool
    standing_note: str  # why not in good standing; "" when it is
    live_grant: AccessGrant | None
    obligations: dict[str, int]  # OBLIGATION_COLUMNS
    findings: dict[str, int]  # by Finding.Status
    incidents_open: int
    incidents_resolved: int
    tokens_by_day: list[int]  # aligned with StageReview.days
    jobs: int
    quota_capacity: int  # the most its grants of the checkpoint allowed over the window, in tokens

    @property
    def tokens_used(self) -> int:
        return sum(self.tokens_by_day)

    @property
    def quota_use(self) -> float | None:
        """Tokens used as a share of what its grants allowed over the window; None without a grant."""
        return self.tokens_used / self.quota_capacity if self.quota_capacity else None

    @property
    def findings_total(self) -> int:
        return sum(self.findings.values())


@dataclass
class CategoryRow:
    key: str
    label: str
    counts: dict[str, int]  # by Finding.Status

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class WeekRow:
    week: date  # the Monday
    counts: dict[str, int]  # by GenerationJob.Status

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class StageReview:
    """What the lab knows about a checkpoint when it decides its next stage."""

    checkpoint: Checkpoint
    now: datetime
    days: list[date]
    findings: list[Finding]
    findings_by_category: list[CategoryRow]
    incidents: list[Incident]
    partners: list[PartnerEvidence]
    jobs_by_week: list[WeekRow]
    decisions: list[ReleaseDecision]
    good_standing_ids: set[int] = field(default_factory=set)

    @property
    def window_start(self) -> date:
        return self.days[0]

    @property
    def window_end(self) -> date:
        return self.days[-1]

    @property
    def latest_decision(self) -> ReleaseDecision | None:
        heads = [d for d in self.decisions if not any(o.supersedes_id == d.pk for o in self.decisions)]
        return heads[0] if heads else None

    @property
    def findings_by_status(self) -> dict[str, int]:
        counts = Counter(f.status for f in self.findings)
        return {status: counts.get(status, 0) for status in Finding.Status.values}

    @property
    def incidents_open(self) -> list[Incident]:
        return [i for i in self.incidents if i.status == Incident.Status.OPEN]

    @property
    def incidents_resolved(self) -> list[Incident]:
        return [i for i in self.incidents if i.status == Incident.Status.RESOLVED]

    @property
    def in_good_standing(self) -> list[PartnerEvidence]:
        return [p for p in self.partners if p.good_standing]

    @property
    def holders(self) -> list[PartnerEvidence]:
        return [p for p in self.partners if p.live_grant is not None]

    @property
    def tokens_used(self) -> int:
        return sum(p.tokens_used for p in self.partners)

    @property
    def jobs_total(self) -> int:
        return sum(row.total for row in self.jobs_by_week)

    def tokens_by_day_total(self) -> list[int]:
        return [sum(values) for values in zip(*(p.tokens_by_day for p in self.partners), strict=True)] or [
            0 for _ in self.days
        ]


def review_window(now: datetime) -> list[date]:
    """The days of the last WINDOW_WEEKS ISO weeks, the current one included (Monday ... today, UTC)."""
    today = now.astimezone(UTC).date()
    start = today - timedelta(days=today.weekday()) - timedelta(weeks=WINDOW_WEEKS - 1)
    return [start + timedelta(days=n) for n in range((today - start).days + 1)]


def stage_review(*, user: User, checkpoint: Checkpoint, now: datetime | None = None) -> StageReview:
    """The evidence for a release decision on `checkpoint`, as of `now` (lab staff; partners 404)."""
    _require_reviewer(user)
    now = now or timezone.now()
    days = review_window(now)
    start, end = days[0], days[-1]

    findings = list(
        Finding.objects.filter(checkpoints=checkpoint).select_related("organization").order_by("-created_at", "-pk")
    )
    incidents = list(
        Incident.objects.filter(checkpoints=checkpoint)
        .select_related("organization", "action_checkpoint")
        .order_by("-created_at", "-pk")
    )
    grants = list(
        AccessGrant.objects.filter(checkpoint=checkpoint).select_related("agreement").order_by("created_at", "pk")
    )

    # Who a review speaks of: every active partner (whom a release could go to), and any other that
    # held the checkpoint or reported on it.
    partners = {o.pk: o for o in Organization.objects.filter(kind=Organization.Kind.PARTNER, active=True)}
    reporters = [f.organization for f in findings] + [i.organization for i in incidents]
    for organization in reporters:
        if organization.kind == Organization.Kind.PARTNER:
            partners.setdefault(organization.pk, organization)
    missing = {g.organization_id for g in grants} - set(partners)
    if missing:
        partners.update({o.pk: o for o in Organization.objects.filter(pk__in=missing)})
    ids = sorted(partners)

    good = set(organizations_in_good_standing(now=now).filter(pk__in=ids).values_list("pk", flat=True))
    with_active_agreement = set(
        Agreement.objects.filter(organization_id__in=ids, status=Agreement.Status.ACTIVE).values_list(
            "organization_id", flat=True
        )
    )
    first_overdue: dict[int, Obligation] = {}
    for obligation in Obligation.objects.filter(pausing_overdue_q(now), organization_id__in=ids).order_by(
        "due_at", "pk"
    ):
        first_overdue.setdefault(obligation.organization_id, obligation)

    obligations = _obligation_counts(ids, now)
    tokens = _tokens_by_day(checkpoint, ids, start, end)
    jobs_by_week, jobs_by_partner = _jobs_by_week(checkpoint, start, days)

    findings_by_partner: dict[int, Counter[str]] = defaultdict(Counter)
    for finding in findings:
        findings_by_partner[finding.organization_id][finding.status] += 1
    incidents_by_partner: dict[int, Counter[str]] = defaultdict(Counter)
    for incident in incidents:
        incidents_by_partner[incident.organization_id][incident.status] += 1

    rows = []
    for pk in ids:
        organization = partners[pk]
        org_grants = [g for g in grants if g.organization_id == pk]
        live = [g for g in org_grants if g.is_live(now) and g.agreement.status == Agreement.Status.ACTIVE]
        rows.append(
            PartnerEvidence(
                organization=organization,
                good_standing=pk in good,
                standing_note=_standing_note(organization, pk in good, pk in with_active_agreement, first_overdue),
                live_grant=max(live, key=lambda g: (g.daily_token_quota, g.ends_at)) if live else None,
                obligations=obligations.get(pk, dict.fromkeys(OBLIGATION_COLUMNS, 0)),
                findings={s: findings_by_partner[pk].get(s, 0) for s in Finding.Status.values},
                incidents_open=incidents_by_partner[pk].get(Incident.Status.OPEN, 0),
                incidents_resolved=incidents_by_partner[pk].get(Incident.Status.RESOLVED, 0),
                tokens_by_day=[tokens.get((pk, day), 0) for day in days],
                jobs=jobs_by_partner.get(pk, 0),
                quota_capacity=_quota_capacity(org_grants, days),
            )
        )
    rows.sort(key=lambda p: p.organization.name.lower())

    by_category = []
    for key, label in Finding.Category.choices:
        counts = Counter(f.status for f in findings if f.category == key)
        by_category.append(CategoryRow(key, str(label), {s: counts.get(s, 0) for s in Finding.Status.values}))

    return StageReview(
        checkpoint=checkpoint,
        now=now,
        days=days,
        findings=findings,
        findings_by_category=by_category,
        incidents=incidents,
        partners=rows,
        jobs_by_week=jobs_by_week,
        decisions=list(_decisions().filter(checkpoint=checkpoint).order_by("-decided_at", "-pk")),
        good_standing_ids=good,
    )


def _standing_note(
    organization: Organization, good: bool, active_agreement: bool, first_overdue: dict[int, Obligation]
) -> str:
    """Why a partner may not be released to, in words the lab admin reads beside its checkbox."""
    if good:
        return ""
    if not organization.active:
        return "deactivated"
    overdue = first_overdue.get(organization.pk)
    if overdue is not None:
        return f"{overdue.description} ({overdue.reference}) overdue since {overdue.due_at:%Y-%m-%d}"
    if not active_agreement:
        return "no active agreement"
    return "not in good standing"


def _obligation_counts(ids: list[int], now: datetime) -> dict[int, dict[str, int]]:
    """Per organisation: obligations fulfilled on time, late, overdue now, open, waived (one query)."""
    open_ = Q(fulfilled_at=None, waived_at=None)
    rows = (
        Obligation.objects.filter(organization_id__in=ids)
        .values("organization_id")
        .annotate(
            # Prefixed: Obligation has a fulfilled_late property an annotation must not shadow.
            n_fulfilled=Count("pk", filter=Q(fulfilled_at__isnull=False, fulfilled_at__lte=F("due_at"))),
            n_fulfilled_late=Count("pk", filter=Q(fulfilled_at__gt=F("due_at"))),
            n_overdue=Count("pk", filter=open_ & Q(due_at__lte=now)),
            n_open=Count("pk", filter=open_ & Q(due_at__gt=now)),
            n_waived=Count("pk", filter=Q(fulfilled_at=None) & Q(waived_at__isnull=False)),
        )
        .order_by("organization_id")
    )
    counts: dict[int, dict[str, int]] = {}
    for row in rows:
        values: dict[str, Any] = dict(row)
        counts[values["organization_id"]] = {c: values[f"n_{c}"] for c in OBLIGATION_COLUMNS}
    return counts


def _tokens_by_day(checkpoint: Checkpoint, ids: list[int], start: date, end: date) -> dict[tuple[int, date], int]:
    """Tokens generated per (organisation, UTC day) under grants of the checkpoint, from the usage ledger."""
    rows = (
        GrantUsage.objects.filter(grant__checkpoint=checkpoint, grant__organization_id__in=ids, day__range=(start, end))
        .values("grant__organization_id", "day")
        .annotate(tokens=Sum("tokens_used"))
        .order_by()
    )
    return {(row["grant__organization_id"], row["day"]): row["tokens"] or 0 for row in rows}


def _jobs_by_week(checkpoint: Checkpoint, start: date, days: list[date]) -> tuple[list[WeekRow], dict[int, int]]:
    """Jobs on the checkpoint per ISO week and status, and per organisation, over the window (one query)."""
    rows = (
        GenerationJob.objects.filter(checkpoint=checkpoint, created_at__gte=day_start(start))
        .annotate(week=TruncWeek("created_at", tzinfo=UTC))
        .values("week", "status", "organization_id")
        .annotate(n=Count("pk"))
        .order_by()
    )
    weeks = {day: WeekRow(day, dict.fromkeys(GenerationJob.Status.values, 0)) for day in days if day.weekday() == 0}
    per_partner: Counter[int] = Counter()
    for row in rows:
        week = row["week"].astimezone(UTC).date() if isinstance(row["week"], datetime) else row["week"]
        if week in weeks:
            weeks[week].counts[row["status"]] += row["n"]
            per_partner[row["organization_id"]] += row["n"]
    return [weeks[w] for w in sorted(weeks)], dict(per_partner)


def _quota_capacity(grants: list[AccessGrant], days: list[date]) -> int:
    """Tokens an organisation's grants allowed over the window: each day, the most generous grant in force."""
    total = 0
    for day in days:
        opens, closes = day_start(day), day_end(day)
        in_force = [
            g.daily_token_quota
            for g in grants
            if g.starts_at < closes and g.ends_at > opens and (g.revoked_at is None or g.revoked_at > opens)
        ]
        total += max(in_force, default=0)
    return total


# --- The summary a decision stores, and its hash -----------------------------------------------------


def stage_review_summary(review: StageReview) -> dict[str, Any]:
    """The evidence as a decision stores it: counts and ids, never texts (those stay on their own rows).

    JSON-safe and free of floats, so its canonical form (evidence_canonical_json) hashes the same
    wherever it is recomputed, from the stored JSON too.
    """
    checkpoint = review.checkpoint
    incidents = review.incidents
    latest = review.latest_decision
    return {
        "checkpoint": checkpoint.slug,
        "checkpoint_status": checkpoint.status,
        "public": checkpoint.public_since is not None,
        "window": {"from": review.window_start.isoformat(), "to": review.window_end.isoformat()},
        "findings": {
            "total": len(review.findings),
            "by_status": review.findings_by_status,
            "by_category": {row.key: row.counts for row in review.findings_by_category},
        },
        "incidents": {
            "open": len(review.incidents_open),
            "resolved": len(review.incidents_resolved),
            "by_severity": {s: sum(1 for i in incidents if i.severity == s) for s in Incident.Severity.values},
            "checkpoint_actions": {a: sum(1 for i in incidents if i.action == a) for a in Incident.Action.values if a},
        },
        "jobs": {
            "total": review.jobs_total,
            "by_status": {s: sum(row.counts[s] for row in review.jobs_by_week) for s in GenerationJob.Status.values},
        },
        "tokens_used": review.tokens_used,
        "partners": [
            {
                "id": p.organization.pk,
                "name": p.organization.name,
                "good_standing": p.good_standing,
                "live_grant": p.live_grant is not None,
                "obligations": p.obligations,
                "findings": p.findings,
                "incidents": {"open": p.incidents_open, "resolved": p.incidents_resolved},
                "jobs": p.jobs,
                "tokens_used": p.tokens_used,
                "quota_capacity": p.quota_capacity,
            }
            for p in sorted(review.partners, key=lambda p: p.organization.pk)
        ],
        "previous_decision": {"reference": latest.reference, "decision": latest.decision} if latest else None,
    }


def evidence_canonical_json(summary: dict[str, Any]) -> bytes:
    """Keys sorted, no spaces, UTF-8: the bytes whose SHA-256 a decision and its sealed record state."""
    return json.dumps(summary, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def evidence_sha256(summary: dict[str, Any]) -> str:
    return hashlib.sha256(evidence_canonical_json(summary)).hexdigest()
