"""Every read of templates, agreements, grants and access requests, scoped to what the user may see.

`access_check` is the one place that decides whether an organisation may use a checkpoint now.
Job submission calls it, and the worker calls it again right before generating, so a revocation
reaches queued jobs too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import django_filters
from django.core.exceptions import PermissionDenied
from django.db.models import Case, Exists, F, IntegerField, OuterRef, Prefetch, Q, QuerySet, Sum, Value, When
from django.db.models.functions import Coalesce
from django.http import Http404
from django.utils import timezone
from django.utils.html import escape

from accounts.models import LAB_ROLES, PARTNER_ROLES, Organization, Role, User
from accounts.permissions import require_role, role_of
from accounts.selectors import lab_organization
from agreements import rendering
from agreements.models import (
    AccessGrant,
    AccessRequest,
    Agreement,
    AgreementTemplate,
    GrantUsage,
    Obligation,
    Signature,
    TemplateVersion,
)
from core.errors import DomainError
from core.filters import CreatedRangeFilterSet
from core.time import next_midnight, utc_iso
from models_registry.models import Checkpoint

TEMPLATE_EDITORS = (Role.LAB_ADMIN, Role.LEGAL)
AGREEMENT_MANAGERS = (Role.LAB_ADMIN, Role.LEGAL)
# Who decides on access requests (approve into an amendment, or reject).
REQUEST_REVIEWERS = (Role.LAB_ADMIN, Role.LEGAL)
# Agreements that may still become active, and so explain "not yet".
_PENDING_AGREEMENT = (Agreement.Status.DRAFT, Agreement.Status.OUT_FOR_SIGNATURE, Agreement.Status.PARTNER_SIGNED)


def template_list(*, user: User) -> QuerySet[AgreementTemplate]:
    require_role(user, *LAB_ROLES)
    return AgreementTemplate.objects.prefetch_related(
        Prefetch("versions", queryset=TemplateVersion.objects.order_by("-number"))
    ).order_by("name")


def template_get(*, user: User, pk: int) -> AgreementTemplate:
    require_role(user, *LAB_ROLES)
    template = AgreementTemplate.objects.filter(pk=pk).first()
    if template is None:
        raise Http404
    return template


def template_version_get(*, user: User, pk: int) -> TemplateVersion:
    require_role(user, *LAB_ROLES)
    version = TemplateVersion.objects.select_related("template", "published_by").filter(pk=pk).first()
    if version is None:
        raise Http404
    return version


def published_versions() -> QuerySet[TemplateVersion]:
    """Versions new agreements may be made from (published, not retired), newest first per template."""
    return (
        TemplateVersion.objects.filter(status=TemplateVersion.Status.PUBLISHED)
        .select_related("template")
        .order_by("template__name", "-number")
    )


def agreement_list(
    *, user: User, organization: Organization | None = None, status: str | None = None
) -> QuerySet[Agreement]:
    """Lab staff see every agreement; partner users their own organisation's, drafts excluded."""
    role = role_of(user)
    if role is None:
        raise Http404
    agreements = Agreement.objects.select_related("organization", "template_version__template").prefetch_related(
        "checkpoints"
    )
    if role in PARTNER_ROLES:
        agreements = agreements.filter(organization_id=user.membership.organization_id).exclude(
            status=Agreement.Status.DRAFT
        )
    elif organization is not None:
        agreements = agreements.filter(organization=organization)
    if status:
        agreements = agreements.filter(status=status)
    return agreements.order_by("-created_at", "-pk")


def agreement_get(*, user: User, pk: int) -> Agreement:
    """One agreement; another organisation's (or a draft, for partners) is 404."""
    agreement = agreement_list(user=user).filter(pk=pk).first()
    if agreement is None:
        raise Http404
    return agreement


# The lifecycle step each side's signature takes (Agreement.TRANSITIONS).
SIGNING_STEPS = {Signature.Side.PARTNER: "partner_sign", Signature.Side.LAB: "countersign"}


def signing_side(*, user: User, agreement: Agreement) -> Signature.Side:
    """The side `user` signs `agreement` for: its organisation's signatories sign, legal countersigns."""
    role = role_of(user)
    if role == Role.SIGNATORY and agreement.organization_id == user.membership.organization_id:
        return Signature.Side.PARTNER
    if role in AGREEMENT_MANAGERS:
        return Signature.Side.LAB
    raise PermissionDenied("Only the organisation's own signatories sign its agreements, and only legal countersigns.")


def agreements_awaiting_signature(*, user: User) -> QuerySet[Agreement]:
    """What a partner signatory should sign now, or what legal should countersign."""
    role = role_of(user)
    if role == Role.SIGNATORY:
        return agreement_list(user=user, status=Agreement.Status.OUT_FOR_SIGNATURE)
    if role in AGREEMENT_MANAGERS:
        return agreement_list(user=user, status=Agreement.Status.PARTNER_SIGNED)
    return Agreement.objects.none()


def agreement_signatures(agreement: Agreement) -> list[Signature]:
    return list(agreement.signatures.select_related("signer").order_by("signed_at"))


def agreement_document_as_signed(agreement: Agreement, signatures: list[Signature]) -> str:
    """The frozen document with each signature block filled in: who signed, when, and the hash they signed.

    The frozen bytes (and their SHA-256) never change; this is how the record is read once signed. A
    block whose label no longer matches (an organisation renamed since) stays as it was frozen; the
    signatures are listed beside the document all the same.
    """
    html = agreement.document_html
    lab = lab_organization()
    labels = {
        Signature.Side.PARTNER: f"For {agreement.organization.legal_name}",
        Signature.Side.LAB: f"For {lab.legal_name if lab else 'the Lab'}",
    }
    for signature in signatures:
        label = labels[Signature.Side(signature.side)]
        blank = rendering.signature_block_html(label).html
        signed = rendering.signature_block_html(
            label, signature.full_name, signature.title, signature.signed_at, signature.document_sha256
        ).html
        html = html.replace(blank, signed, 1)
    return html


def _long_date(day: date) -> str:
    return f"{day.day} {day:%B %Y}"


def document_values(agreement: Agreement) -> dict[str, rendering.Value]:
    """The placeholder values for one agreement, from its organisation, the lab and its terms."""
    organization = agreement.organization
    lab = lab_organization()
    lab_name = lab.legal_name if lab else "the Lab"
    checkpoints = sorted(agreement.checkpoints.all(), key=lambda c: c.parameter_count)
    return {
        "organization.name": organization.name,
        "organization.legal_name": organization.legal_name,
        "organization.jurisdiction": organization.jurisdiction,
        # One line in the document, whatever line breaks the address was typed with (a browser sends CRLF).
        "organization.address": ", ".join(line.strip() for line in organization.address.splitlines() if line.strip()),
        "lab.legal_name": lab_name,
        "effective_date": _long_date(agreement.effective_date),
        "term_months": str(agreement.term_months),
        "end_date": _long_date(agreement.end_date),
        "checkpoints": rendering.checkpoint_list_html(
            [(c.display_name, f"{c.size_label} parameters, “{c.slug}”") for c in checkpoints]
        ),
        "purpose": agreement.purpose,
        "daily_token_quota": f"{agreement.daily_token_quota:,}",
        "obligations.findings_report_days": str(agreement.template_version.findings_report_days),
        "obligations.incident_report_hours": str(agreement.template_version.incident_report_hours),
        "obligations.final_report_days": str(agreement.template_version.final_report_days),
        "obligations.prepublication_review_days": str(agreement.template_version.prepublication_review_days),
        "signature.partner": rendering.signature_block_html(f"For {organization.legal_name}"),
        "signature.lab": rendering.signature_block_html(f"For {lab_name}"),
    }


def agreement_render(agreement: Agreement) -> str:
    """The document as it would be frozen now; after sending, the frozen HTML is what counts."""
    if agreement.document_html:
        return agreement.document_html
    body = rendering.render_markdown(agreement.template_version.body, document_values(agreement))
    preamble = _amendment_preamble(agreement)
    if preamble:  # under the document's title, where a reader starts
        title_end = body.find("</h1>")
        at = title_end + len("</h1>") if title_end >= 0 else 0
        body = body[:at] + preamble + body[at:]
    return f'<article class="agreement-document">{body}</article>'


def _amendment_preamble(agreement: Agreement) -> str:
    """An amendment says in its signed text which agreement it amends, and whether it replaces it."""
    amended = agreement.amends
    if amended is None:
        return ""
    since = f" of {_long_date(amended.effective_date)}" if amended.effective_date else ""
    effect = (
        f"and replaces it: once this agreement is in force, {amended.reference} ends"
        if agreement.replaces_amended
        else f"and adds to it: {amended.reference} stays in force alongside this agreement"
    )
    return (
        f'<p class="amendment-preamble"><strong>Amendment.</strong> This agreement amends model-sharing agreement '
        f"{escape(amended.reference)}{escape(since)} between the same parties, {escape(effect)}.</p>"
    )


# render_markdown marks a placeholder whose value is blank as a highlighted "[name]".
_MISSING_RE = re.compile(r'<span class="placeholder-missing">\[([^\]<]+)\]</span>')


def missing_values(document_html: str) -> list[str]:
    """Placeholders a rendered document shows as blank (an organisation without an address, say)."""
    return sorted(set(_MISSING_RE.findall(document_html)))


# --- Reads for the pages (views and home page) -------------------------------------------------------


def grantable_checkpoints() -> QuerySet[Checkpoint]:
    """The registry's checkpoints, smallest first; agreement_create refuses any not available now."""
    return Checkpoint.objects.order_by("parameter_count")


def agreement_home(*, user: User) -> dict[str, object]:
    """What a persona's home page shows about agreements: a few rows each, never a whole table."""
    role = role_of(user)
    if role in AGREEMENT_MANAGERS:
        return {
            "template_count": AgreementTemplate.objects.count(),
            "awaiting_countersignature": list(agreements_awaiting_signature(user=user)[:5]),
            "agreement_drafts": list(agreement_list(user=user, status=Agreement.Status.DRAFT)[:5]),
            "out_for_signature_count": agreement_list(user=user, status=Agreement.Status.OUT_FOR_SIGNATURE).count(),
        }
    if role in PARTNER_ROLES:
        return {
            "agreements": list(agreement_list(user=user)[:5]),
            "awaiting_signature": list(agreements_awaiting_signature(user=user)[:5]),
        }
    return {}


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


class AccessRefused(DomainError):
    """The choke point said no; `decision` names what is missing. 429 for a used-up quota, else 403."""

    def __init__(self, decision: AccessDecision) -> None:
        message = decision.message[:1].upper() + decision.message[1:] + "."
        super().__init__(message, details={"reason": decision.code})
        self.decision = decision
        if decision.code == "quota_exceeded":
            self.status, self.code = 429, "quota_exceeded"
            self.resets_at = next_midnight(timezone.now())
            self.details = {"resets_at": utc_iso(self.resets_at), "quota_left": decision.quota_left}
        else:
            self.status, self.code = 403, "access_denied"

    @property
    def headers(self) -> dict[str, str]:
        if self.code != "quota_exceeded":
            return {}
        return {"Retry-After": str(max(1, math.ceil((self.resets_at - timezone.now()).total_seconds())))}


def tokens_charged_today(*, organization: Organization, checkpoint: Checkpoint, now: datetime | None = None) -> int:
    """Tokens charged today (UTC) to an organisation's use of a checkpoint, from the usage ledger.

    A job still queued or running holds a reservation of everything it may generate; a finished one
    is charged what it generated (agreements.services.usage_reserve / usage_settle keep the ledger).
    """
    day = (now or timezone.now()).astimezone(UTC).date()
    rows = GrantUsage.objects.filter(grant__organization=organization, grant__checkpoint=checkpoint, day=day)
    charged: int = rows.aggregate(charged=Coalesce(Sum(F("tokens_reserved") + F("tokens_used")), 0))["charged"]
    return charged


def access_check(
    *,
    organization: Organization,
    checkpoint: Checkpoint,
    tokens: int = 0,
    now: datetime | None = None,
    check_quota: bool = True,
    known_grant: AccessGrant | None = None,
    known_paused: bool | None = None,
    hold: Callable[[AccessGrant], GrantUsage] | None = None,
) -> AccessDecision:
    """May `organization` use `checkpoint` now for up to `tokens` more tokens?

    Checks, in order: the checkpoint's status (a kill switch beats any agreement), a live grant
    from an active agreement (term checked here, not only by the hourly sweep), and the daily
    token quota (from the usage ledger). Callers audit refusals with services.access_refusal_log.

    `known_grant`, with `check_quota=False`: a grant the caller has just read with its agreement (the
    worker: the job's grant, read as it claimed the job). If it is still live, some live grant exists
    and the organisation's grants need not be read again; if not, they are, to name what is missing.
    `known_paused`: whether the organisation has an overdue report obligation, as the caller read it
    with the grant (overdue_obligation_exists); None reads it here.
    `hold` is called with the chosen grant just before the quota is read and returns its ledger row for
    today, locked: usage_reserve locks it there, so submissions at once are checked one after the other.
    """
    now = now or timezone.now()
    slug = checkpoint.slug
    if checkpoint.status == Checkpoint.Status.WITHDRAWN:
        return _refuse("withdrawn", f"checkpoint {slug} is withdrawn{_reason(checkpoint.status_reason)}")
    if checkpoint.status == Checkpoint.Status.EMBARGOED:
        return _refuse("embargoed", f"checkpoint {slug} is embargoed{_reason(checkpoint.status_reason)}")

    if (
        not check_quota
        and known_grant is not None
        and known_grant.organization_id == organization.pk
        and known_grant.checkpoint_id == checkpoint.pk
        and known_grant.is_live(now)
        and known_grant.agreement.status == Agreement.Status.ACTIVE
    ):
        grant = known_grant  # without a quota to check, any live grant answers as well as the most generous
        sole_grant = False
    else:
        # Whether access is paused comes with the grants, in the same statement.
        grants = list(
            AccessGrant.objects.filter(organization=organization, checkpoint=checkpoint)
            .select_related("agreement")
            .annotate(paused=overdue_obligation_exists(organization=OuterRef("organization_id"), now=now))
            .order_by("-created_at", "-pk")
        )
        live = [g for g in grants if g.is_live(now) and g.agreement.status == Agreement.Status.ACTIVE]
        if not live:
            return _explain_no_grant(organization=organization, checkpoint=checkpoint, grants=grants, now=now)
        # Several live grants (an amendment that adds to, not replaces, an agreement): the most generous.
        grant = max(live, key=lambda g: (g.daily_token_quota, g.ends_at))
        known_paused = grant.paused
        sole_grant = len(grants) == 1
    overdue = overdue_obligation(organization=organization, now=now) if known_paused is not False else None
    if overdue is not None:
        # Paused, not ended: the grant and its term stand, and access resumes once the report arrives.
        return _refuse(
            "obligation_overdue",
            f"access is paused: {overdue.description} ({overdue.reference}) was due on "
            f"{overdue.due_at:%Y-%m-%d %H:%M} UTC and has not been received",
            grant,
        )
    if not check_quota:
        # The worker re-checks a job whose tokens were reserved at submission: only the grant matters.
        return AccessDecision(allowed=True, grant=grant, code="ok", message=f"{slug} may be used", quota_left=None)

    held = hold(grant) if hold is not None else None
    if held is not None and sole_grant:
        used = held.tokens_charged  # the organisation's only grant of this checkpoint: its row is the whole day
    else:
        used = tokens_charged_today(organization=organization, checkpoint=checkpoint, now=now)
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
    *, organization: Organization, checkpoint: Checkpoint, grants: Sequence[AccessGrant], now: datetime
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


# --- Grants, and the registry with who holds access --------------------------------------------


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


def checkpoint_registry(*, user: User) -> QuerySet[Checkpoint]:
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


def checkpoint_holders(*, checkpoint: Checkpoint, grant_ids: list[int] | None = None) -> list[User]:
    """The active people at every organisation holding a grant of the checkpoint, to tell them of its status.

    Holding: a grant not revoked and not yet ended (one starting later counts too), or, for the kill
    switch, which revokes them first, the grants named by `grant_ids`.
    """
    if grant_ids is None:
        now = timezone.now()
        grants = AccessGrant.objects.filter(
            checkpoint=checkpoint, revoked_at=None, ends_at__gt=now, agreement__status=Agreement.Status.ACTIVE
        )
    else:
        grants = AccessGrant.objects.filter(checkpoint=checkpoint, pk__in=grant_ids)
    organizations = grants.values("organization_id")
    return list(User.objects.filter(membership__organization__in=organizations, is_active=True).order_by("email"))


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


def organization_live_grants(
    *, organization_ids: list[int], now: datetime | None = None
) -> dict[int, list[AccessGrant]]:
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


# --- Obligations ------------------------------------------------------------------------------------

# Who extends a due date (with a reason); auditors read obligations, partners fulfil their own.
OBLIGATION_MANAGERS = (Role.LAB_ADMIN, Role.LEGAL)
DUE_SOON_DAYS = Obligation.DUE_SOON_DAYS


def pausing_overdue_q(now: datetime | None = None) -> Q:
    """Report obligations overdue at `now` that pause their organisation's access: the rule, in one place."""
    return Q(kind__in=Obligation.PAUSING_KINDS, fulfilled_at=None, waived_at=None, due_at__lte=now or timezone.now())


def overdue_obligation(*, organization: Organization, now: datetime | None = None) -> Obligation | None:
    """The longest-overdue open report obligation that pauses the organisation's access, if any."""
    return (
        Obligation.objects.filter(pausing_overdue_q(now), organization=organization)
        .select_related("agreement")
        .order_by("due_at", "pk")
        .first()
    )


def overdue_obligation_exists(*, organization: Organization | OuterRef, now: datetime | None = None) -> Exists:
    """Whether overdue_obligation would find one, as an expression a query reading grants or jobs annotates.

    `organization` is usually an OuterRef to the row's organisation: the choke point then learns that
    access is not paused in the same statement that reads the grant, and reads the obligation itself
    only to name it.
    """
    return Exists(Obligation.objects.filter(pausing_overdue_q(now), organization=organization))


# In the order pages group them: what needs doing first.
OBLIGATION_STATES = tuple(Obligation.STATES)


def obligation_list(
    *,
    user: User,
    organization: Organization | None = None,
    kind: str | None = None,
    state: str | None = None,
    now: datetime | None = None,
    by_state: bool = False,
) -> QuerySet[Obligation]:
    """Partner users see their organisation's obligations; lab staff every partner's, filterable.

    By due date; `by_state` puts them in OBLIGATION_STATES' order first (overdue, due soon, ...), as pages
    show them. ObligationFilter narrows it, on the obligations page and in the API alike."""
    role = role_of(user)
    if role is None:
        raise Http404
    now = now or timezone.now()
    obligations = Obligation.objects.select_related(
        "organization", "agreement", "checkpoint", "fulfilled_by", "extended_by"
    )
    if role in PARTNER_ROLES:
        obligations = obligations.filter(organization_id=user.membership.organization_id)
    elif role not in LAB_ROLES:
        raise Http404
    elif organization is not None:
        obligations = obligations.filter(organization=organization)
    if kind:
        obligations = obligations.filter(kind=kind)
    if state:
        obligations = obligations.filter(obligation_state_q(state, now))
    if by_state:
        rank = Case(
            *(When(obligation_state_q(name, now), then=Value(i)) for i, name in enumerate(OBLIGATION_STATES)),
            output_field=IntegerField(),
        )
        # What is still owed, soonest first; what is done (fulfilled, waived), latest first.
        owed_due = Case(When(state_rank__lt=OBLIGATION_STATES.index("fulfilled"), then=F("due_at")))
        return obligations.annotate(state_rank=rank).order_by(
            "state_rank", owed_due.asc(nulls_last=True), F("due_at").desc(), "-pk"
        )
    return obligations.order_by("due_at", "pk")


def obligation_state_q(state: str, now: datetime) -> Q:
    """The rows in one of OBLIGATION_STATES, as Obligation.state() names them."""
    open_ = Q(fulfilled_at=None, waived_at=None)
    soon = now + timedelta(days=DUE_SOON_DAYS)
    return {
        "fulfilled": ~Q(fulfilled_at=None),
        "waived": Q(fulfilled_at=None) & ~Q(waived_at=None),
        "overdue": open_ & Q(due_at__lte=now),
        "due_soon": open_ & Q(due_at__gt=now, due_at__lt=soon),
        "open": open_ & Q(due_at__gte=soon),
    }[state]


def obligation_get(*, user: User, pk: int) -> Obligation:
    obligation = obligation_list(user=user).filter(pk=pk).first()
    if obligation is None:
        raise Http404
    return obligation


def obligations_fulfillable(*, organization: Organization) -> QuerySet[Obligation]:
    """Report obligations a finding from this organisation may fulfil: open findings and final reports."""
    return (
        Obligation.objects.filter(
            organization=organization, kind__in=Obligation.PAUSING_KINDS, fulfilled_at=None, waived_at=None
        )
        .select_related("agreement", "checkpoint")
        .order_by("due_at", "pk")
    )


def organizations_in_good_standing(*, now: datetime | None = None) -> QuerySet[Organization]:
    """Partners with an active agreement and no overdue report obligation: who a release may go to."""
    now = now or timezone.now()
    overdue = Obligation.objects.filter(pausing_overdue_q(now)).values("organization_id")
    return (
        Organization.objects.filter(
            kind=Organization.Kind.PARTNER, active=True, agreements__status=Agreement.Status.ACTIVE
        )
        .exclude(pk__in=overdue)
        .distinct()
        .order_by("name")
    )


class ObligationFilter(CreatedRangeFilterSet):
    """The obligations list's filters: the obligations page's form and GET /api/v1/obligations/'s query
    parameters. Organisation is for lab staff; a partner's own is the only one it may name."""

    organization = django_filters.ModelChoiceFilter(
        queryset=Organization.objects.filter(kind=Organization.Kind.PARTNER).order_by("name"),
        to_field_name="name",
        empty_label="All organisations",
        label="Organisation",
        help_text="A partner organisation's name (lab staff).",
        error_messages={"invalid_choice": "Choose an organisation from the list."},
    )
    kind = django_filters.ChoiceFilter(
        choices=Obligation.Kind.choices,
        label="Kind",
        empty_label="All kinds",
        error_messages={"invalid_choice": "Choose a kind from the list."},
    )
    state = django_filters.ChoiceFilter(
        choices=list(Obligation.STATES.items()),
        method="_state",
        label="State",
        empty_label="All states",
        help_text="overdue, due_soon, open, fulfilled or waived.",
        error_messages={"invalid_choice": "Choose a state from the list."},
    )

    class Meta:
        model = Obligation
        fields = ["organization", "kind", "state", "created_after", "created_before"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        user = getattr(self.request, "user", None)
        if role_of(user) in PARTNER_ROLES:
            assert user is not None
            self.filters["organization"].queryset = Organization.objects.filter(pk=user.membership.organization_id)

    def _state(self, rows: QuerySet[Obligation], name: str, value: str) -> QuerySet[Obligation]:
        return rows.filter(obligation_state_q(value, timezone.now()))


@dataclass(frozen=True)
class ObligationEntry:
    """One step in an obligation's life, for its page: what happened, when, and by whom or why."""

    label: str
    when: datetime
    detail: str = ""


def obligation_timeline(obligation: Obligation) -> list[ObligationEntry]:
    """What happened to an obligation, in order, from its own fields (each step is also audited)."""
    entries = [ObligationEntry("Scheduled", obligation.created_at, f"under {obligation.agreement.reference}")]
    if obligation.reminded_at:
        entries.append(ObligationEntry("Reminder sent", obligation.reminded_at, "to the partner's people"))
    if obligation.overdue_at:
        paused = "; access paused" if obligation.pauses_access else ""
        entries.append(
            ObligationEntry("Found overdue", obligation.overdue_at, f"the partner and the lab were told{paused}")
        )
    if obligation.extended_at:
        by = obligation.extended_by.get_full_name() if obligation.extended_by else "the lab"
        entries.append(
            ObligationEntry(
                "Extended",
                obligation.extended_at,
                f"by {by} to {obligation.due_at:%Y-%m-%d}: {obligation.extension_reason}",
            )
        )
    if obligation.fulfilled_at:
        by = obligation.fulfilled_by.get_full_name() if obligation.fulfilled_by else ""
        late = " (late)" if obligation.fulfilled_late else ""
        entries.append(
            ObligationEntry(
                f"Fulfilled{late}", obligation.fulfilled_at, ", ".join(filter(None, [obligation.fulfilment, by]))
            )
        )
    if obligation.waived_at:
        entries.append(ObligationEntry("Waived", obligation.waived_at, obligation.waive_reason))
    return sorted(entries, key=lambda entry: entry.when)


HOME_ROWS = 5


def obligation_home(*, user: User, now: datetime | None = None) -> dict[str, object]:
    """What a persona's home page shows about obligations (templates/agreements/_home_obligations.html).

    Partners: whether access is paused and by what, and what is overdue or due soon. Lab staff: how many
    reports are overdue across partners, and the next ones due.
    """
    role = role_of(user)
    now = now or timezone.now()
    if role in PARTNER_ROLES:
        mine = obligation_list(user=user, now=now)
        attention = mine.filter(obligation_state_q("overdue", now) | obligation_state_q("due_soon", now))
        return {
            "obligation_is_lab": False,
            "obligation_paused_by": overdue_obligation(organization=user.membership.organization, now=now),
            "obligations_attention": list(attention[:HOME_ROWS]),
            "obligation_next": mine.filter(obligation_state_q("open", now)).first(),
        }
    if role in LAB_ROLES:
        lab = obligation_list(user=user, now=now)
        overdue = lab.filter(obligation_state_q("overdue", now), kind__in=Obligation.PAUSING_KINDS)
        return {
            "obligation_is_lab": True,
            "obligations_overdue_count": overdue.count(),
            "obligations_paused_organizations": overdue.values("organization_id").distinct().count(),
            "obligations_overdue": list(overdue[:3]),
            "obligations_upcoming": list(
                lab.filter(obligation_state_q("due_soon", now) | obligation_state_q("open", now))[:HOME_ROWS]
            ),
        }
    return {}
