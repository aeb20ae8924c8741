"""Every read of findings, scoped at one point: partners see their organisation's, lab staff every one.

Also what the finding form offers (the checkpoints an organisation has used, its recent jobs, the report
obligations it may fulfil) and the findings and incidents cards of the home pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import django_filters
from django.db.models import Count, F, Prefetch, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from accounts.models import LAB_ROLES, PARTNER_ROLES, Organization, Role, User
from accounts.permissions import role_of
from agreements.models import Agreement, Obligation
from agreements.selectors import obligations_fulfillable
from core.filters import CreatedRangeFilterSet
from inference.models import GenerationJob, Sample
from models_registry.models import Checkpoint
from research.models import Finding, FindingAttachment, FindingReview, Incident
from research.selectors.incidents import SEVERITY_ORDER, incident_list, incident_queue

REVIEWER_ROLES = (Role.LEGAL, Role.LAB_ADMIN)
# Findings the lab still has to decide on: not yet accepted or sent back, or a publication to answer.
AWAITING_REVIEW = Q(status__in=[Finding.Status.SUBMITTED, Finding.Status.ACKNOWLEDGED]) | Q(
    publication_review=Finding.PublicationReview.PENDING
)
RECENT_JOBS_OFFERED = 50


def finding_list(*, user: User) -> QuerySet[Finding]:
    """Newest first, each with its organisation, author and checkpoints (one query for the page's checkpoints).

    FindingFilter narrows it, on the findings page and in the API alike."""
    role = role_of(user)
    if role is None:
        raise Http404
    findings = Finding.objects.select_related("organization", "author", "obligation").prefetch_related(
        Prefetch("checkpoints", queryset=Checkpoint.objects.order_by("parameter_count"))
    )
    if role in PARTNER_ROLES:
        findings = findings.filter(organization_id=user.membership.organization_id)
    elif role not in LAB_ROLES:
        raise Http404
    return findings.order_by("-created_at", "-pk")


class FindingFilter(CreatedRangeFilterSet):
    """The findings list's filters: the page's form and GET /api/v1/findings/'s query parameters."""

    status = django_filters.ChoiceFilter(
        choices=Finding.Status.choices,
        empty_label="Any state",
        label="State",
        error_messages={"invalid_choice": "Choose a state from the list."},
    )
    category = django_filters.ChoiceFilter(
        choices=Finding.Category.choices,
        empty_label="All categories",
        error_messages={"invalid_choice": "Choose a category from the list."},
    )
    checkpoint = django_filters.ModelChoiceFilter(
        field_name="checkpoints",
        queryset=Checkpoint.objects.order_by("parameter_count"),
        to_field_name="slug",
        empty_label="All checkpoints",
        label="Checkpoint",
        help_text="A checkpoint slug, e.g. gpt2.",
        error_messages={"invalid_choice": "Choose a checkpoint from the list."},
    )
    publication_review = django_filters.ChoiceFilter(
        choices=[c for c in Finding.PublicationReview.choices if c[0]],
        empty_label="Any publication review",
        label="Publication review",
        error_messages={"invalid_choice": "Choose a publication review state from the list."},
    )
    organization = django_filters.ModelChoiceFilter(
        queryset=Organization.objects.filter(kind=Organization.Kind.PARTNER).order_by("name"),
        empty_label="All partners",
        label="Partner",
        help_text="A partner organisation's id (lab staff; partners see only their own findings anyway).",
        error_messages={"invalid_choice": "Choose a partner from the list."},
    )

    class Meta:
        model = Finding
        fields = ["status", "category", "checkpoint", "publication_review", "organization"]


def finding_get(*, user: User, pk: int) -> Finding:
    """One finding with everything its page shows; another organisation's is 404, as if it did not exist."""
    finding = (
        finding_list(user=user)
        .prefetch_related(
            Prefetch(
                "cited_jobs",
                queryset=GenerationJob.objects.select_related("checkpoint").prefetch_related(
                    Prefetch("samples", queryset=Sample.objects.order_by("index"))
                ),
            ),
            Prefetch("attachments", queryset=FindingAttachment.objects.order_by("uploaded_at", "pk")),
            Prefetch("reviews", queryset=FindingReview.objects.select_related("actor").order_by("created_at", "pk")),
        )
        .select_related("publication_reviewed_by", "obligation__agreement")
        .filter(pk=pk)
        .first()
    )
    if finding is None:
        raise Http404
    return finding


def finding_attachment_get(*, user: User, finding_pk: int, pk: int) -> FindingAttachment:
    """An attachment of a finding the user may see (its organisation, lab staff, auditors); else 404."""
    finding = finding_list(user=user).filter(pk=finding_pk).first()
    if finding is None:
        raise Http404
    attachment = FindingAttachment.objects.filter(finding=finding, pk=pk).first()
    if attachment is None:
        raise Http404
    attachment.finding = finding
    return attachment


def finding_can_review(*, user: User, finding: Finding) -> bool:
    return role_of(user) in REVIEWER_ROLES and finding.status in (
        Finding.Status.SUBMITTED,
        Finding.Status.ACKNOWLEDGED,
    )


def finding_can_answer_publication(*, user: User, finding: Finding) -> bool:
    return role_of(user) in REVIEWER_ROLES and finding.publication_review == Finding.PublicationReview.PENDING


def finding_can_revise(*, user: User, finding: Finding) -> bool:
    return (
        role_of(user) in PARTNER_ROLES
        and user.membership.organization_id == finding.organization_id
        and finding.status == Finding.Status.CHANGES_REQUESTED
    )


def finding_publication_obligation(finding: Finding) -> Obligation | None:
    """The pre-publication review obligation sharing this finding kept, if it plans a publication."""
    if not finding.plans_publication:
        return None
    return (
        Obligation.objects.filter(
            organization_id=finding.organization_id,
            kind=Obligation.Kind.PREPUBLICATION_REVIEW,
            fulfilment__startswith=f"finding {finding.reference} ",
        )
        .order_by("-pk")
        .first()
    )


def findings_awaiting_review(*, user: User) -> QuerySet[Finding]:
    """The lab's queue, oldest first: findings not yet accepted or sent back, and publications to answer."""
    if role_of(user) not in LAB_ROLES:
        return Finding.objects.none()
    return finding_list(user=user).filter(AWAITING_REVIEW).order_by("created_at", "pk")


# --- What the finding form offers ---------------------------------------------------------------------


def active_agreement(*, organization_id: int) -> Agreement | None:
    """The organisation's agreement in force whose terms apply now: the newest active one."""
    return (
        Agreement.objects.filter(organization_id=organization_id, status=Agreement.Status.ACTIVE)
        .select_related("template_version")
        .order_by(F("activated_at").desc(nulls_last=True), "-pk")
        .first()
    )


def finding_checkpoints_allowed(*, organization_id: int) -> QuerySet[Checkpoint]:
    """Checkpoints a finding of this organisation may be about: those it holds or held a grant for, and
    any released to the public."""
    return (
        Checkpoint.objects.filter(Q(grants__organization_id=organization_id) | Q(public_since__isnull=False))
        .distinct()
        .order_by("parameter_count")
    )


@dataclass(frozen=True)
class FindingFormOptions:
    checkpoints: list[Checkpoint]
    jobs: list[GenerationJob]
    obligations: list[Obligation]
    prepublication_days: int | None  # None: no active agreement, so no publication can be planned here


def finding_form_options(*, user: User) -> FindingFormOptions:
    """For a partner's finding form: its checkpoints, its recent succeeded jobs, the reports it owes."""
    if role_of(user) not in PARTNER_ROLES:
        raise Http404
    organization_id = user.membership.organization_id
    jobs = (
        GenerationJob.objects.filter(organization_id=organization_id, status=GenerationJob.Status.SUCCEEDED)
        .select_related("checkpoint")
        .order_by("-created_at", "-pk")[:RECENT_JOBS_OFFERED]
    )
    agreement = active_agreement(organization_id=organization_id)
    return FindingFormOptions(
        checkpoints=list(finding_checkpoints_allowed(organization_id=organization_id)),
        jobs=list(jobs),
        obligations=list(obligations_fulfillable(organization=user.membership.organization)),
        prepublication_days=agreement.template_version.prepublication_review_days if agreement else None,
    )


# --- Home pages -----------------------------------------------------------------------------------------


def research_home(*, user: User) -> dict[str, Any]:
    """The home pages' findings and incidents cards (templates/research/_home_findings.html, _home_incidents.html).

    Partners: their organisation's latest findings with their state, the publications waiting for the lab's
    answer, and their open incidents. Lab staff: how many findings wait for review, the pre-publication reviews
    due soonest, and open incidents by severity.
    """
    role = role_of(user)
    if role in PARTNER_ROLES:
        findings = finding_list(user=user)
        return {
            "research_is_lab": False,
            "finding_recent": list(findings[:5]),
            "finding_changes_requested": findings.filter(status=Finding.Status.CHANGES_REQUESTED).count(),
            "finding_publications_pending": list(
                findings.filter(publication_review=Finding.PublicationReview.PENDING).order_by(
                    "publication_review_due_at"
                )[:5]
            ),
            "finding_can_submit": True,
            "incident_open_count": incident_list(user=user).filter(status=Incident.Status.OPEN).count(),
            "incident_can_report": True,
        }
    if role in LAB_ROLES:
        awaiting = findings_awaiting_review(user=user)
        counts: dict[str, int] = dict(
            incident_list(user=user)
            .filter(status=Incident.Status.OPEN)
            .order_by()
            .values("severity")
            .annotate(n=Count("pk"))
            .values_list("severity", "n")
        )
        now = timezone.now()
        return {
            "research_is_lab": True,
            "finding_awaiting_count": awaiting.count(),
            "finding_awaiting": list(awaiting[:5]),
            "finding_publications_due": list(
                finding_list(user=user)
                .filter(publication_review=Finding.PublicationReview.PENDING)
                .order_by("publication_review_due_at", "pk")[:5]
            ),
            "finding_due_soon": now + timedelta(days=7),
            "incident_open_by_severity": [
                (Incident.Severity(severity).label, severity, counts[severity])
                for severity in SEVERITY_ORDER
                if counts.get(severity)
            ],
            "incident_open_count": sum(counts.values()),
            "incident_queue_top": list(incident_queue(user=user).filter(status=Incident.Status.OPEN)[:5]),
            "incident_can_report": role in REVIEWER_ROLES,
        }
    return {}
