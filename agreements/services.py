"""Every write to templates, agreements, grants, the usage ledger and access requests: one transaction,
one audit event, follow-ups on commit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import F, Max, QuerySet
from django.db.models.functions import Greatest
from django.urls import reverse
from django.utils import timezone

from accounts.models import PARTNER_ROLES, NotificationKind, Organization, Role, User
from accounts.permissions import REAUTH_WINDOW, require_role, role_of
from accounts.services import notifications_send
from agreements import hooks, rendering
from agreements.models import (
    OBLIGATION_TERM_RANGES,
    AccessGrant,
    AccessRequest,
    Agreement,
    AgreementTemplate,
    GrantUsage,
    InvalidTransition,
    Obligation,
    Signature,
    TemplateVersion,
)
from agreements.selectors import (
    AGREEMENT_MANAGERS,
    OBLIGATION_MANAGERS,
    REQUEST_REVIEWERS,
    SIGNING_STEPS,
    TEMPLATE_EDITORS,
    AccessDecision,
    access_check,
    agreement_render,
    missing_values,
    signing_side,
)
from audit import events
from audit.models import AuditEvent
from audit.services import audit_append
from core.tasks import task_send_on_commit
from core.time import day_start
from core.validators import clean_purpose, clean_reason
from models_registry.models import Checkpoint

CONSENT_TEXT = (
    "I agree to sign this agreement electronically. I understand that my electronic signature is as binding "
    "as a handwritten one; that ModelPact keeps a record of it with the agreement (my name, title, email, the "
    "document's SHA-256 as shown to me, the time, my IP address, browser and time zone, and how I confirmed my "
    "identity); and that I can download the signed agreement at any time."
)
CONSENT_SHA256 = rendering.sha256_text(CONSENT_TEXT)
MAX_TERM_MONTHS = 120
MAX_DAILY_TOKEN_QUOTA = 100_000_000


def _step(agreement: Agreement, step: str) -> None:
    try:
        agreement.transition(step)
    except InvalidTransition as exc:
        raise ValidationError(str(exc)) from None


# --- Templates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObligationTerms:
    """What a partner owes under agreements made from a version: the numbers its obligations are scheduled
    from, and which the text states through the `obligations.*` placeholders. None is a term left blank."""

    findings_report_days: int | None
    incident_report_hours: int | None
    final_report_days: int | None
    prepublication_review_days: int | None

    @classmethod
    def of(cls, version: TemplateVersion) -> ObligationTerms:
        return cls(**version.obligation_terms)

    @classmethod
    def defaults(cls) -> ObligationTerms:
        return cls(**TemplateVersion().obligation_terms)  # the model's field defaults

    def as_dict(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in OBLIGATION_TERM_RANGES}


# How each term is named in a message next to its field.
_TERM_WORDS = {
    "findings_report_days": ("days", "the findings report (after access starts)"),
    "incident_report_hours": ("hours", "the incident report window"),
    "final_report_days": ("days", "the final report (before the term ends)"),
    "prepublication_review_days": ("days", "the pre-publication review"),
}


def _term_errors(terms: ObligationTerms) -> dict[str, str]:
    """A message per term outside OBLIGATION_TERM_RANGES (or left blank), by field name."""
    errors = {}
    for name, value in terms.as_dict().items():
        low, high = OBLIGATION_TERM_RANGES[name]
        unit, what = _TERM_WORDS[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            errors[name] = f"Enter a whole number of {unit} from {low} to {high} for {what}."
    return errors


def _body_errors(body: str) -> list[str]:
    if not body.strip():
        return ["The template is empty."]
    return [str(problem) for problem in rendering.check_template(body)]


def _check_draft(body: str, terms: ObligationTerms) -> None:
    """Refuse a body with problems or terms out of range, naming every field at once."""
    errors: dict[str, Any] = _term_errors(terms)
    body_errors = _body_errors(body)
    if body_errors:
        errors["body"] = body_errors
    if errors:
        raise ValidationError(errors)


def _check_publishable(version: TemplateVersion) -> None:
    """What is published is signed: the text must state every obligation term it schedules."""
    _check_draft(version.body, ObligationTerms.of(version))
    missing = rendering.obligation_placeholders_missing(version.body)
    if missing:
        names = ", ".join(f"{{{{ {name} }}}}" for name in missing)
        raise ValidationError(
            {
                "body": f"State every obligation term in the text before publishing; it does not mention {names}. "
                "Agreements schedule these obligations, so the signed document must say them."
            }
        )


@transaction.atomic
def template_create(
    *, actor: User, name: str, body: str, description: str = "", terms: ObligationTerms | None = None
) -> TemplateVersion:
    """A new template with its first draft version (with the default obligation terms unless given)."""
    require_role(actor, *TEMPLATE_EDITORS)
    terms = terms or ObligationTerms.defaults()
    name = name.strip()
    try:
        _check_draft(body, terms)
        errors: dict[str, Any] = {}
    except ValidationError as exc:
        errors = exc.message_dict
    if not name:
        errors["name"] = "Give the template a name."
    elif AgreementTemplate.objects.filter(name__iexact=name).exists():
        errors["name"] = f"A template called {name!r} already exists."
    if errors:
        raise ValidationError(errors)
    template = AgreementTemplate.objects.create(name=name, description=description.strip(), created_by=actor)
    version = TemplateVersion.objects.create(
        template=template, number=1, body=body, created_by=actor, **terms.as_dict()
    )
    audit_append(
        actor=actor, action=events.TEMPLATE_CREATED, target=template, data={"name": name, "terms": terms.as_dict()}
    )
    return version


@transaction.atomic
def template_version_save(
    *, actor: User, version: TemplateVersion, body: str, terms: ObligationTerms | None = None
) -> TemplateVersion:
    """Save a draft's text and obligation terms (None keeps the terms it has)."""
    require_role(actor, *TEMPLATE_EDITORS)
    version = TemplateVersion.objects.select_for_update().get(pk=version.pk)
    if not version.is_draft:
        raise ValidationError(f"{version} is {version.get_status_display().lower()} and can no longer change.")
    terms = terms or ObligationTerms.of(version)
    _check_draft(body, terms)
    changed_terms = {
        name: {"from": getattr(version, name), "to": value}
        for name, value in terms.as_dict().items()
        if getattr(version, name) != value
    }
    if body != version.body or changed_terms:
        version.body = body
        for name, change in changed_terms.items():
            setattr(version, name, change["to"])
        version.updated_at = timezone.now()
        version.save(update_fields=["body", "updated_at", *changed_terms])
        audit_append(
            actor=actor,
            action=events.TEMPLATE_VERSION_SAVED,
            target=version,
            data={
                "template": version.template.name,
                "version": version.number,
                "length": len(body),
                "terms_changed": changed_terms,
            },
        )
    return version


@transaction.atomic
def template_version_publish(*, actor: User, version: TemplateVersion) -> TemplateVersion:
    """Freeze a draft: from now on its body, obligation terms and SHA-256 never change."""
    require_role(actor, *TEMPLATE_EDITORS)
    version = TemplateVersion.objects.select_for_update().get(pk=version.pk)
    if not version.is_draft:
        raise ValidationError(f"{version} is already {version.get_status_display().lower()}.")
    _check_publishable(version)
    version.status = TemplateVersion.Status.PUBLISHED
    version.sha256 = rendering.sha256_text(version.body)
    version.published_at = timezone.now()
    version.published_by = actor
    version.save(update_fields=["status", "sha256", "published_at", "published_by"])
    audit_append(
        actor=actor,
        action=events.TEMPLATE_VERSION_PUBLISHED,
        target=version,
        data={
            "template": version.template.name,
            "version": version.number,
            "sha256": version.sha256,
            "terms": version.obligation_terms,
        },
    )
    return version


@transaction.atomic
def template_version_save_and_publish(
    *, actor: User, version: TemplateVersion, body: str, terms: ObligationTerms | None = None
) -> TemplateVersion:
    """Publish exactly the text and terms the editor shows: saved and published together, or neither."""
    version = template_version_save(actor=actor, version=version, body=body, terms=terms)
    return template_version_publish(actor=actor, version=version)


@transaction.atomic
def template_version_new_draft(*, actor: User, template: AgreementTemplate) -> TemplateVersion:
    """Start the next draft from the latest version (or return the open draft)."""
    require_role(actor, *TEMPLATE_EDITORS)
    template = AgreementTemplate.objects.select_for_update().get(pk=template.pk)
    existing = template.versions.filter(status=TemplateVersion.Status.DRAFT).first()
    if existing:
        return existing
    latest = template.versions.order_by("-number").first()
    number = (template.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    # The next draft starts from the latest text and terms: legal changes what differs.
    terms = ObligationTerms.of(latest) if latest else ObligationTerms.defaults()
    version = TemplateVersion.objects.create(
        template=template, number=number, body=latest.body if latest else "", created_by=actor, **terms.as_dict()
    )
    audit_append(
        actor=actor,
        action=events.TEMPLATE_VERSION_DRAFTED,
        target=version,
        data={"template": template.name, "version": number, "from_version": latest.number if latest else None},
    )
    return version


@transaction.atomic
def template_version_retire(*, actor: User, version: TemplateVersion) -> TemplateVersion:
    """No new agreements from this version; existing ones are unaffected."""
    require_role(actor, *TEMPLATE_EDITORS)
    version = TemplateVersion.objects.select_for_update().get(pk=version.pk)
    if version.status != TemplateVersion.Status.PUBLISHED:
        raise ValidationError(f"Only a published version can be retired; {version} is {version.get_status_display()}.")
    version.status = TemplateVersion.Status.RETIRED
    version.retired_at = timezone.now()
    version.save(update_fields=["status", "retired_at"])
    audit_append(
        actor=actor,
        action=events.TEMPLATE_VERSION_RETIRED,
        target=version,
        data={"template": version.template.name, "version": version.number},
    )
    return version


# --- Agreements: drafting ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AgreementTerms:
    """What an agreement grants, as legal fills it in: checked whenever it is drafted, changed or sent."""

    template_version: TemplateVersion
    checkpoints: list[Checkpoint]
    effective_date: date
    term_months: int
    daily_token_quota: int
    purpose: str

    @classmethod
    def of(cls, agreement: Agreement) -> AgreementTerms:
        return cls(
            template_version=agreement.template_version,
            checkpoints=list(agreement.checkpoints.all()),
            effective_date=agreement.effective_date,
            term_months=agreement.term_months,
            daily_token_quota=agreement.daily_token_quota,
            purpose=agreement.purpose,
        )


def _validate_terms(*, organization: Organization, terms: AgreementTerms) -> dict[str, Any]:
    """The agreement's fields as they will be stored, or a ValidationError naming each bad one."""
    errors: dict[str, str] = {}
    # Judge the version as it is now, not as the caller last read it (it may have been retired since).
    template_version = TemplateVersion.objects.select_related("template").get(pk=terms.template_version.pk)
    if organization.kind != Organization.Kind.PARTNER:
        errors["organization"] = "Agreements are made with partner organisations."
    elif not organization.active:
        errors["organization"] = f"{organization.name} is deactivated."
    if template_version.status != TemplateVersion.Status.PUBLISHED:
        errors["template_version"] = (
            f"{template_version} is {template_version.get_status_display().lower()}; choose a published version."
        )
    if not terms.checkpoints:
        errors["checkpoints"] = "Choose at least one checkpoint to grant."
    else:
        unavailable = [c for c in terms.checkpoints if c.status != Checkpoint.Status.AVAILABLE]
        if unavailable:
            names = ", ".join(f"{c.slug} ({c.get_status_display().lower()})" for c in unavailable)
            errors["checkpoints"] = f"These checkpoints cannot be granted now: {names}."
    if terms.effective_date is None:
        errors["effective_date"] = "Enter the date the agreement takes effect."
    elif terms.effective_date < timezone.now().date():
        errors["effective_date"] = "The effective date cannot be in the past."
    if not isinstance(terms.term_months, int) or not 1 <= terms.term_months <= MAX_TERM_MONTHS:
        errors["term_months"] = f"The term is a whole number of months from 1 to {MAX_TERM_MONTHS}."
    quota = terms.daily_token_quota
    if not isinstance(quota, int) or not 1 <= quota <= MAX_DAILY_TOKEN_QUOTA:
        errors["daily_token_quota"] = f"The daily token quota is a whole number from 1 to {MAX_DAILY_TOKEN_QUOTA:,}."
    purpose = terms.purpose
    try:
        purpose = clean_purpose(purpose)
    except ValidationError as exc:
        errors.update({field: " ".join(messages) for field, messages in exc.message_dict.items()})
    if errors:
        raise ValidationError(errors)
    return {
        "organization": organization,
        "template_version": template_version,
        "effective_date": terms.effective_date,
        "term_months": terms.term_months,
        "daily_token_quota": quota,
        "purpose": purpose,
    }


@transaction.atomic
def agreement_create(
    *,
    actor: User,
    organization: Organization,
    terms: AgreementTerms,
    amends: Agreement | None = None,
    replaces_amended: bool = True,
) -> Agreement:
    require_role(actor, *AGREEMENT_MANAGERS)
    fields = _validate_terms(organization=organization, terms=terms)
    if amends is not None:
        if amends.organization_id != organization.pk:
            raise ValidationError("An amendment is made with the same organisation as the agreement it amends.")
        if amends.status != Agreement.Status.ACTIVE:
            raise ValidationError(f"Only an active agreement can be amended; {amends.reference} is not active.")
    agreement = Agreement.objects.create(
        **fields, amends=amends, replaces_amended=replaces_amended if amends else False, created_by=actor
    )
    agreement.checkpoints.set(terms.checkpoints)
    audit_append(
        actor=actor,
        action=events.AGREEMENT_CREATED,
        target=agreement,
        data={
            "reference": agreement.reference,
            "template_version": str(agreement.template_version),
            "checkpoints": sorted(c.slug for c in terms.checkpoints),
            "effective_date": agreement.effective_date.isoformat(),
            "term_months": agreement.term_months,
            "daily_token_quota": agreement.daily_token_quota,
            "amends": amends.reference if amends else None,
        },
    )
    return agreement


@transaction.atomic
def agreement_update(
    *,
    actor: User,
    agreement: Agreement,
    terms: AgreementTerms,
    replaces_amended: bool = True,
) -> Agreement:
    """Change a draft. Once sent, an agreement's terms never change: void it and draft again."""
    require_role(actor, *AGREEMENT_MANAGERS)
    agreement = Agreement.objects.select_for_update().get(pk=agreement.pk)
    if not agreement.is_editable:
        raise ValidationError(f"{agreement.reference} was sent and can no longer change; void it and draft again.")
    fields = _validate_terms(organization=agreement.organization, terms=terms)
    for name, value in fields.items():
        setattr(agreement, name, value)
    agreement.replaces_amended = replaces_amended if agreement.amends_id else False
    agreement.save()
    agreement.checkpoints.set(terms.checkpoints)
    audit_append(
        actor=actor,
        action=events.AGREEMENT_UPDATED,
        target=agreement,
        data={"checkpoints": sorted(c.slug for c in terms.checkpoints), "term_months": agreement.term_months},
    )
    return agreement


def agreement_amend(
    *, actor: User, agreement: Agreement, extra_checkpoints: Sequence[Checkpoint] = (), purpose: str | None = None
) -> Agreement:
    """A draft amendment prefilled from an active agreement (legal then adjusts checkpoints, quota or term).

    `purpose` replaces the agreement's when the amendment comes from an access request: the licence is
    granted for the purpose the partner gave there."""
    require_role(actor, *AGREEMENT_MANAGERS)
    version = _latest_published(agreement.template_version.template)
    checkpoints = list(agreement.checkpoints.filter(status=Checkpoint.Status.AVAILABLE))
    checkpoints += [c for c in extra_checkpoints if c not in checkpoints]
    terms = AgreementTerms(
        template_version=version,
        checkpoints=checkpoints,
        effective_date=timezone.now().date(),
        term_months=agreement.term_months,
        daily_token_quota=agreement.daily_token_quota,
        purpose=agreement.purpose if purpose is None else purpose,
    )
    return agreement_create(
        actor=actor,
        organization=agreement.organization,
        terms=terms,
        amends=agreement,
        replaces_amended=True,
    )


def agreement_draft_for_request(*, actor: User, access_request: AccessRequest) -> Agreement:
    """An approved access request opens a prefilled draft: an amendment, or a first agreement."""
    organization = access_request.organization
    requested = list(access_request.checkpoints.all())
    active = (
        Agreement.objects.filter(organization=organization, status=Agreement.Status.ACTIVE)
        .order_by("-activated_at")
        .first()
    )
    if active is not None:
        return agreement_amend(
            actor=actor, agreement=active, extra_checkpoints=requested, purpose=access_request.purpose
        )
    template = AgreementTemplate.objects.filter(versions__status=TemplateVersion.Status.PUBLISHED).first()
    if template is None:
        raise ValidationError("Publish an agreement template first; there is nothing to draft from.")
    terms = AgreementTerms(
        template_version=_latest_published(template),
        checkpoints=requested,
        effective_date=timezone.now().date(),
        term_months=12,
        daily_token_quota=50_000,
        purpose=access_request.purpose,
    )
    return agreement_create(actor=actor, organization=organization, terms=terms)


def _latest_published(template: AgreementTemplate) -> TemplateVersion:
    version = template.versions.filter(status=TemplateVersion.Status.PUBLISHED).order_by("-number").first()
    if version is None:
        raise ValidationError(f"{template.name} has no published version to draft from.")
    return version


# --- Agreements: sending and signing ----------------------------------------------------------------


@transaction.atomic
def agreement_send(*, actor: User, agreement: Agreement) -> Agreement:
    """Render the document once and freeze it; signatories are emailed a link."""
    require_role(actor, *AGREEMENT_MANAGERS)
    agreement = Agreement.objects.select_for_update().get(pk=agreement.pk)
    _step(agreement, "send")
    _validate_terms(organization=agreement.organization, terms=AgreementTerms.of(agreement))
    if not agreement.organization.memberships.filter(role=Role.SIGNATORY, user__is_active=True).exists():
        raise ValidationError(f"{agreement.organization.name} has no active signatory yet; invite one before sending.")
    document_html = agreement_render(agreement)
    blank = missing_values(document_html)
    if blank:
        raise ValidationError(
            f"The document would be signed with blanks for {', '.join(blank)}. Fill them in (for an "
            f"organisation's details, on its page) and send again."
        )
    agreement.document_html = document_html
    agreement.document_sha256 = rendering.sha256_text(agreement.document_html)
    now = timezone.now()
    agreement.sent_at = now
    agreement.signature_due_at = now + timedelta(days=settings.AGREEMENT_SIGNATURE_DAYS)
    agreement.save()
    audit_append(
        actor=actor,
        action=events.AGREEMENT_SENT,
        target=agreement,
        data={"document_sha256": agreement.document_sha256, "signature_due_at": agreement.signature_due_at},
    )
    task_send_on_commit("agreements.tasks.notify_signatories", agreement.pk, "sent")
    return agreement


@transaction.atomic
def agreement_mark_viewed(*, actor: User, agreement: Agreement) -> Agreement:
    """The first time someone at the partner opens the sent document (kept for the record)."""
    if agreement.first_viewed_at or role_of(actor) not in PARTNER_ROLES or not agreement.document_html:
        return agreement
    agreement = Agreement.objects.select_for_update().get(pk=agreement.pk)
    if agreement.first_viewed_at is None:
        agreement.first_viewed_at = timezone.now()
        agreement.save(update_fields=["first_viewed_at"])
        audit_append(actor=actor, action=events.AGREEMENT_VIEWED, target=agreement)
    return agreement


def agreement_sign(
    *,
    actor: User,
    agreement: Agreement,
    full_name: str,
    title: str,
    consent: bool,
    shown_document_sha256: str,
    reauth_method: str | None,
    reauth_at: datetime | None,
    ip: str | None,
    user_agent: str,
    time_zone: str,
) -> Signature:
    """Sign for the partner (a signatory) or countersign for the lab (legal), which activates the agreement.

    A signature whose shown document hash differs from the frozen one is refused, and the refusal is
    audited in its own transaction so it survives the rollback.
    """
    side = signing_side(user=actor, agreement=agreement)
    if shown_document_sha256 != agreement.document_sha256:
        with transaction.atomic():
            audit_append(
                actor=actor,
                action=events.AGREEMENT_SIGNING_REFUSED,
                target=agreement,
                data={"shown_sha256": shown_document_sha256[:64], "document_sha256": agreement.document_sha256},
            )
        raise ValidationError(
            "The document changed since you opened it (its SHA-256 differs from the one you were shown). "
            "Reload the page, read it again, and sign the current version."
        )
    return _record_signature(
        actor=actor,
        agreement=agreement,
        side=side,
        full_name=full_name,
        title=title,
        consent=consent,
        reauth_method=reauth_method,
        reauth_at=reauth_at,
        ip=ip,
        user_agent=user_agent,
        time_zone=time_zone,
    )


@transaction.atomic
def _record_signature(
    *,
    actor: User,
    agreement: Agreement,
    side: Signature.Side,
    full_name: str,
    title: str,
    consent: bool,
    reauth_method: str | None,
    reauth_at: datetime | None,
    ip: str | None,
    user_agent: str,
    time_zone: str,
) -> Signature:
    agreement = Agreement.objects.select_for_update().get(pk=agreement.pk)
    errors = {}
    if not consent:
        errors["consent"] = "Tick the box to agree to sign electronically."
    if not full_name.strip():
        errors["full_name"] = "Type your full name as your signature."
    if not title.strip():
        errors["title"] = "Enter your title or position."
    if errors:
        raise ValidationError(errors)
    now = timezone.now()
    if reauth_method is None or reauth_at is None or now - reauth_at > REAUTH_WINDOW:
        raise ValidationError("Confirm your identity again (password or authenticator code) before signing.")
    _step(agreement, SIGNING_STEPS[side])
    signature = Signature.objects.create(
        agreement=agreement,
        signer=actor,
        side=side,
        full_name=full_name.strip(),
        title=title.strip(),
        signer_email=actor.email,
        consent_text=CONSENT_TEXT,
        consent_sha256=CONSENT_SHA256,
        document_sha256=agreement.document_sha256,
        signed_at=now,
        ip=ip,
        user_agent=user_agent[:500],
        time_zone=time_zone[:64],
        reauth_method=reauth_method,
        reauth_at=reauth_at,
    )
    data = {
        "side": side,
        "full_name": signature.full_name,
        "title": signature.title,
        "document_sha256": signature.document_sha256,
        "consent_sha256": CONSENT_SHA256,
        "reauth_method": reauth_method,
        "time_zone": signature.time_zone,
        "user_agent": signature.user_agent,
    }
    if side == Signature.Side.PARTNER:
        agreement.partner_signed_at = now
        agreement.save(update_fields=["status", "partner_signed_at"])
        audit_append(actor=actor, action=events.AGREEMENT_SIGNED, target=agreement, data=data)
        task_send_on_commit("agreements.tasks.notify_lab_countersign", agreement.pk)
    else:
        agreement.activated_at = now
        agreement.save(update_fields=["status", "activated_at"])
        audit_append(actor=actor, action=events.AGREEMENT_COUNTERSIGNED, target=agreement, data=data)
        _activate(actor=actor, agreement=agreement)
    return signature


def _activate(*, actor: User, agreement: Agreement) -> None:
    """The agreement is now active: its grants start, its obligations are scheduled, and an amendment
    may supersede the original (whose open obligations it takes over)."""
    grants_create_for_agreement(agreement=agreement, actor=actor)
    hooks.agreement_milestone(agreement, "activated")
    superseded = None
    if agreement.amends_id and agreement.replaces_amended:
        original = Agreement.objects.select_for_update().get(pk=agreement.amends_id)
        if original.can("supersede"):
            _end(
                actor=actor,
                agreement=original,
                step="supersede",
                action=events.AGREEMENT_SUPERSEDED,
                reason=f"superseded by {agreement.reference}",
            )
            superseded = original
    obligations_schedule(agreement=agreement, actor=actor, superseded=superseded)
    task_send_on_commit("agreements.tasks.notify_signatories", agreement.pk, "activated")


def _end(*, actor: User | None, agreement: Agreement, step: str, action: str, reason: str) -> Agreement:
    _step(agreement, step)
    agreement.ended_at = timezone.now()
    agreement.end_reason = reason
    agreement.save(update_fields=["status", "ended_at", "end_reason"])
    audit_append(actor=actor, action=action, target=agreement, data={"reason": reason})
    grants_revoke_for_agreement(agreement=agreement, actor=actor, reason=f"agreement {agreement.reference} {reason}")
    if step != "supersede":  # the amendment that supersedes it takes its open obligations over
        _obligations_waive_for_ended(agreement=agreement, actor=actor)
    hooks.agreement_milestone(agreement, "ended")
    return agreement


def _require_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if len(reason) < 5:
        raise ValidationError({"reason": "Give a reason (at least a few words); the other side will see it."})
    if len(reason) > 2000:
        raise ValidationError({"reason": "Keep the reason under 2,000 characters."})
    return reason


@transaction.atomic
def agreement_decline(*, actor: User, agreement: Agreement, reason: str) -> Agreement:
    require_role(actor, Role.SIGNATORY)
    if agreement.organization_id != actor.membership.organization_id:
        raise PermissionDenied("Only the organisation's own signatories can decline its agreements.")
    reason = _require_reason(reason)
    agreement = Agreement.objects.select_for_update().get(pk=agreement.pk)
    _step(agreement, "decline")
    agreement.ended_at = timezone.now()
    agreement.end_reason = reason
    agreement.save(update_fields=["status", "ended_at", "end_reason"])
    audit_append(actor=actor, action=events.AGREEMENT_DECLINED, target=agreement, data={"reason": reason})
    task_send_on_commit("agreements.tasks.notify_lab_declined", agreement.pk)
    return agreement


@transaction.atomic
def agreement_void(*, actor: User, agreement: Agreement, reason: str = "") -> Agreement:
    require_role(actor, *AGREEMENT_MANAGERS)
    agreement = Agreement.objects.select_for_update().get(pk=agreement.pk)
    was_sent = agreement.status == Agreement.Status.OUT_FOR_SIGNATURE
    _step(agreement, "void")
    agreement.ended_at = timezone.now()
    agreement.end_reason = (reason or "").strip()
    agreement.save(update_fields=["status", "ended_at", "end_reason"])
    audit_append(actor=actor, action=events.AGREEMENT_VOIDED, target=agreement, data={"reason": agreement.end_reason})
    if was_sent:
        task_send_on_commit("agreements.tasks.notify_signatories", agreement.pk, "voided")
    return agreement


@transaction.atomic
def agreement_terminate(*, actor: User, agreement: Agreement, reason: str) -> Agreement:
    """End an active agreement now; its grants are revoked, so access ends at once."""
    require_role(actor, *AGREEMENT_MANAGERS)
    reason = _require_reason(reason)
    agreement = Agreement.objects.select_for_update().get(pk=agreement.pk)
    _end(actor=actor, agreement=agreement, step="terminate", action=events.AGREEMENT_TERMINATED, reason=reason)
    task_send_on_commit("agreements.tasks.notify_signatories", agreement.pk, "terminated")
    return agreement


# --- Time-driven steps (beat) ------------------------------------------------------------------------


@transaction.atomic
def agreement_expire(*, agreement: Agreement, reason: str) -> Agreement:
    agreement = Agreement.objects.select_for_update().get(pk=agreement.pk)
    return _end(actor=None, agreement=agreement, step="expire", action=events.AGREEMENT_EXPIRED, reason=reason)


def agreements_expire_due(*, now: datetime | None = None) -> list[str]:
    """Expire active agreements past their end date and unsigned ones past their signing deadline."""
    now = now or timezone.now()
    expired = []
    for agreement in Agreement.objects.filter(status=Agreement.Status.ACTIVE).only(
        "pk", "effective_date", "term_months"
    ):
        if agreement.end_date <= now.date():
            expired.append(agreement_expire(agreement=agreement, reason="reached its end date").reference)
    unsigned = Agreement.objects.filter(
        status__in=[Agreement.Status.OUT_FOR_SIGNATURE, Agreement.Status.PARTNER_SIGNED], signature_due_at__lte=now
    )
    for agreement in unsigned:
        expired.append(agreement_expire(agreement=agreement, reason="was not signed in time").reference)
    return expired


@transaction.atomic
def agreement_remind(*, agreement: Agreement) -> bool:
    """Remind the signatories of an agreement still waiting for them; False when it no longer is."""
    agreement = Agreement.objects.select_for_update().get(pk=agreement.pk)
    if agreement.status != Agreement.Status.OUT_FOR_SIGNATURE:
        return False
    agreement.last_reminder_at = timezone.now()
    agreement.reminders_sent += 1
    agreement.save(update_fields=["last_reminder_at", "reminders_sent"])
    audit_append(
        actor=None,
        action=events.AGREEMENT_REMINDER_SENT,
        target=agreement,
        data={"reminder": agreement.reminders_sent},
    )
    # The reminder's number names it: each reminder is told once, however late its task runs.
    task_send_on_commit("agreements.tasks.notify_signatories", agreement.pk, "reminder", agreement.reminders_sent)
    return True


def agreements_remind_due(*, now: datetime | None = None) -> list[str]:
    """Every N days after sending (AGREEMENT_REMINDER_DAYS), until signed or ended."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.AGREEMENT_REMINDER_DAYS)
    reminded = []
    for agreement in Agreement.objects.filter(status=Agreement.Status.OUT_FOR_SIGNATURE, sent_at__lte=cutoff):
        last = agreement.last_reminder_at or agreement.sent_at
        assert last is not None  # the query matched sent agreements only
        if last <= cutoff and agreement_remind(agreement=agreement):
            reminded.append(agreement.reference)
    return reminded


# --- Grants: created by an agreement becoming active, revoked when it ends -------------------------


def _grant_create(
    *, agreement: Agreement, checkpoint: Checkpoint, starts: datetime, actor: User | None, reason: str = ""
) -> AccessGrant:
    """One grant of `checkpoint` under `agreement` from `starts` to the agreement's end, at its quota; audited."""
    ends = day_start(agreement.end_date)
    grant = AccessGrant.objects.create(
        organization=agreement.organization,
        checkpoint=checkpoint,
        agreement=agreement,
        starts_at=starts,
        ends_at=ends,
        daily_token_quota=agreement.daily_token_quota,
    )
    data: dict[str, Any] = {
        "agreement": agreement.reference,
        "checkpoint": checkpoint.slug,
        "starts_at": starts.isoformat(),
        "ends_at": ends.isoformat(),
        "daily_token_quota": agreement.daily_token_quota,
    }
    if reason:
        data["reason"] = reason
    audit_append(actor=actor, action=events.GRANT_CREATED, target=grant, organization=agreement.organization, data=data)
    return grant


@transaction.atomic
def grants_create_for_agreement(*, agreement: Agreement, actor: User | None) -> list[AccessGrant]:
    """An agreement became active: grant its organisation each checkpoint for its term and quota."""
    starts = day_start(agreement.effective_date)
    # Publicly released checkpoints come with every agreement, whether or not it names them.
    granted = agreement.checkpoints.all() | Checkpoint.objects.exclude(public_since=None)
    return [
        _grant_create(agreement=agreement, checkpoint=checkpoint, starts=starts, actor=actor)
        for checkpoint in granted.distinct().order_by("parameter_count")
    ]


@transaction.atomic
def grants_create_for_public_release(*, checkpoint: Checkpoint, actor: User) -> list[AccessGrant]:
    """A checkpoint released to the public: every active agreement that lacks it grants it for the rest of
    its term and at its quota. Agreements that become active later include it (grants_create_for_agreement)."""
    now = timezone.now()
    grants = []
    active = (
        Agreement.objects.select_for_update()
        .filter(status=Agreement.Status.ACTIVE)
        .exclude(grants__checkpoint=checkpoint)
    )
    for agreement in active.select_related("organization").order_by("pk"):
        if day_start(agreement.end_date) <= now:
            continue  # the hourly expiry has not caught up with it yet
        starts = max(now, day_start(agreement.effective_date))
        grants.append(
            _grant_create(
                agreement=agreement, checkpoint=checkpoint, starts=starts, actor=actor, reason="public release"
            )
        )
    return grants


def _grants_revoke(grants: QuerySet[AccessGrant], *, actor: User | None, reason: str, now: datetime) -> list[int]:
    """Revoke each live grant of `grants` with the reason partners and auditors see; one event each."""
    revoked = []
    for grant in grants.select_for_update().filter(revoked_at=None).select_related("agreement", "checkpoint"):
        grant.revoked_at = now
        grant.revoke_reason = reason
        grant.save(update_fields=["revoked_at", "revoke_reason"])
        data = {"agreement": grant.agreement.reference, "checkpoint": grant.checkpoint.slug, "reason": reason}
        if reason == "expired":
            data["ends_at"] = grant.ends_at.isoformat()
        audit_append(actor=actor, action=events.GRANT_REVOKED, target=grant, organization=grant.organization, data=data)
        revoked.append(grant.pk)
    return revoked


@transaction.atomic
def grants_revoke_for_agreement(*, agreement: Agreement, actor: User | None, reason: str) -> int:
    """Revoke every live grant an agreement created."""
    return len(_grants_revoke(agreement.grants.all(), actor=actor, reason=reason, now=timezone.now()))


@transaction.atomic
def grants_revoke_for_checkpoint(*, checkpoint: Checkpoint, actor: User, reason: str) -> list[int]:
    """Revoke every live grant of a checkpoint (the kill switch); returns their ids."""
    return _grants_revoke(checkpoint.grants.all(), actor=actor, reason=reason, now=timezone.now())


@transaction.atomic
def grants_revoke_expired(*, now: datetime | None = None) -> int:
    """Revoke grants past their end (beat, hourly). access_check already refuses them; this records it."""
    now = now or timezone.now()
    return len(_grants_revoke(AccessGrant.objects.filter(ends_at__lte=now), actor=None, reason="expired", now=now))


# --- The daily usage ledger: inference reserves tokens at submission and settles them at the end -----


def _usage_row(grant: AccessGrant, day: date) -> GrantUsage:
    """The grant's row for `day`, locked for the rest of the transaction (made if missing)."""
    usage = GrantUsage.objects.select_for_update().filter(grant=grant, day=day).first()
    if usage is None:
        # Two first submissions of the day may race to create the row: one wins, both then lock it.
        GrantUsage.objects.bulk_create([GrantUsage(grant=grant, day=day)], ignore_conflicts=True)
        usage = GrantUsage.objects.select_for_update().get(grant=grant, day=day)
    return usage


# No savepoints: both run inside their caller's transaction (a job's submission or its end), return
# rather than raise, and a failed statement fails that whole transaction anyway.
@transaction.atomic(savepoint=False)
def usage_reserve(
    *, organization: Organization, checkpoint: Checkpoint, tokens: int, now: datetime | None = None
) -> AccessDecision:
    """Ask the choke point for `tokens` more today and, if allowed, reserve them on the grant's ledger.

    The grant's row for the day is locked before the quota is read, so two submissions at once are
    checked one after the other and cannot both fit into the last of the quota. A refusal reserves
    nothing; the caller raises it (and audits it with access_refusal_log).
    """
    now = now or timezone.now()
    day = now.astimezone(UTC).date()
    held: list[GrantUsage] = []

    def hold(grant: AccessGrant) -> GrantUsage:
        held.append(_usage_row(grant, day))
        return held[0]

    decision = access_check(organization=organization, checkpoint=checkpoint, tokens=tokens, now=now, hold=hold)
    if decision.allowed:
        assert decision.grant is not None and held and held[0].grant_id == decision.grant.pk
        usage = held[0]
        usage.tokens_reserved += tokens
        usage.save(update_fields=["tokens_reserved"])
    return decision


@transaction.atomic(savepoint=False)
def usage_settle(*, grant: AccessGrant, day: date, reserved: int, used: int) -> None:
    """A job ended: its reservation made on `day` becomes what it generated (0 when it never ran)."""
    # One UPDATE reads, locks and writes the row; a missing row (never expected) is made first.
    changes = {"tokens_reserved": Greatest(F("tokens_reserved") - reserved, 0), "tokens_used": F("tokens_used") + used}
    if not GrantUsage.objects.filter(grant=grant, day=day).update(**changes):
        _usage_row(grant, day)
        GrantUsage.objects.filter(grant=grant, day=day).update(**changes)


# --- Refusals at the choke point -------------------------------------------------------------------


@transaction.atomic
def access_refusal_log(
    *, actor: User | None, organization: Organization, checkpoint: Checkpoint, decision: AccessDecision
) -> AuditEvent:
    """Audit a refusal from selectors.access_check; every caller that acts on one must call this.

    Call it outside any transaction the caller is about to roll back, or the event goes with it.
    """
    return audit_append(
        actor=actor,
        action=events.ACCESS_REFUSED,
        target=checkpoint,
        organization=organization,
        data={
            "checkpoint": checkpoint.slug,
            "code": decision.code,
            "message": decision.message,
            "grant": decision.grant.pk if decision.grant else None,
            "quota_left": decision.quota_left,
        },
    )


# --- Access requests -----------------------------------------------------------------------------


@transaction.atomic
def access_request_create(*, actor: User, checkpoints: list[Checkpoint], purpose: str) -> AccessRequest:
    """A partner user asks for access to one or more checkpoints, for a stated purpose.

    A checkpoint is pending at most once per organisation: the organisation's row is locked while
    its pending requests are checked, so of two requests sent at once the second waits for the
    first, then sees it and is refused with its number.
    """
    require_role(actor, *PARTNER_ROLES)
    organization = Organization.objects.select_for_update().get(pk=actor.membership.organization_id)
    errors: dict[str, list[str]] = {}
    try:
        purpose = clean_purpose(purpose)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    checkpoints = sorted(set(checkpoints), key=lambda c: c.parameter_count)
    if not checkpoints:
        errors["checkpoints"] = ["Choose at least one checkpoint."]
    else:
        problems = [
            f"{c.slug} is {c.get_status_display().lower()} and cannot be requested."
            for c in Checkpoint.objects.filter(pk__in=[c.pk for c in checkpoints]).order_by("parameter_count")
            if c.status != Checkpoint.Status.AVAILABLE
        ]
        pending = (
            AccessRequest.objects.filter(
                organization=organization, status=AccessRequest.Status.PENDING, checkpoints__in=checkpoints
            )
            .values_list("pk", "checkpoints__slug")
            .order_by("pk")
        )
        problems += [
            f"{slug} is already requested (request #{pk} is pending)."
            for pk, slug in pending
            if slug in {c.slug for c in checkpoints}
        ]
        problems += [
            f"{c.slug} is already yours under {decision.grant.agreement.reference}."
            for c in checkpoints
            if (decision := access_check(organization=organization, checkpoint=c, check_quota=False)).allowed
            and decision.grant is not None
        ]
        if problems:
            errors["checkpoints"] = problems
    if not organization.active:
        errors.setdefault("__all__", []).append(f"{organization.name} is deactivated; it cannot request access.")
    if errors:
        raise ValidationError(errors)
    access_request = AccessRequest.objects.create(organization=organization, requester=actor, purpose=purpose)
    access_request.checkpoints.set(checkpoints)
    audit_append(
        actor=actor,
        action=events.ACCESS_REQUEST_CREATED,
        target=access_request,
        data={"checkpoints": [c.slug for c in checkpoints], "purpose": purpose},
    )
    slugs = ", ".join(c.slug for c in checkpoints)
    notifications_send(
        users=User.objects.filter(membership__role__in=REQUEST_REVIEWERS),
        kind=NotificationKind.ACCESS_REQUEST_RECEIVED,
        title=f"Access request #{access_request.pk} from {organization.name}: {slugs}",
        body=f"{actor.get_full_name()} at {organization.name} asks for access to {slugs}, to use it for: {purpose}",
        url=reverse("access_request_detail", args=[access_request.pk]),
        dedupe_key=f"access_request.received:{access_request.pk}",
    )
    return access_request


def _notify_request_decided(access_request: AccessRequest, title: str, body: str) -> None:
    """Tell the requester and their organisation's admins what became of the request."""
    organization = access_request.organization
    admins = User.objects.filter(membership__organization=organization, membership__role=Role.PARTNER_ADMIN)
    notifications_send(
        users=[access_request.requester, *admins],
        kind=NotificationKind.ACCESS_REQUEST_DECIDED,
        title=title,
        body=body,
        url=reverse("access_request_detail", args=[access_request.pk]),
        dedupe_key=f"access_request.decided:{access_request.pk}",
    )


def _lock_pending(access_request: AccessRequest) -> AccessRequest:
    access_request = AccessRequest.objects.select_for_update().get(pk=access_request.pk)
    if access_request.status != AccessRequest.Status.PENDING:
        raise ValidationError(
            f"Access request #{access_request.pk} is already {access_request.get_status_display().lower()}."
        )
    return access_request


@transaction.atomic
def access_request_withdraw(*, actor: User, access_request: AccessRequest) -> AccessRequest:
    """The requesting organisation takes back a request still waiting for review."""
    require_role(actor, *PARTNER_ROLES)
    if actor.membership.organization_id != access_request.organization_id:
        raise PermissionDenied("Only the requesting organisation can withdraw its request.")
    access_request = _lock_pending(access_request)
    access_request.status = AccessRequest.Status.WITHDRAWN
    access_request.decided_at = timezone.now()
    access_request.decided_by = actor
    access_request.save(update_fields=["status", "decided_at", "decided_by"])
    audit_append(actor=actor, action=events.ACCESS_REQUEST_WITHDRAWN, target=access_request)
    return access_request


@transaction.atomic
def access_request_approve(*, actor: User, access_request: AccessRequest) -> AccessRequest:
    """Approve a request: it opens a prefilled draft amendment (or first agreement) for legal to finish.

    Approval grants nothing by itself; access follows once that agreement is signed and active.
    """
    require_role(actor, *REQUEST_REVIEWERS)
    access_request = _lock_pending(access_request)
    unavailable = [
        c for c in access_request.checkpoints.order_by("parameter_count") if c.status != Checkpoint.Status.AVAILABLE
    ]
    if unavailable:
        names = ", ".join(f"{c.slug} is {c.get_status_display().lower()}" for c in unavailable)
        raise ValidationError(f"This request cannot be approved now: {names}. Reject it with that reason instead.")
    amendment = agreement_draft_for_request(actor=actor, access_request=access_request)
    access_request.status = AccessRequest.Status.APPROVED
    access_request.decided_at = timezone.now()
    access_request.decided_by = actor
    access_request.amendment = amendment
    access_request.save(update_fields=["status", "decided_at", "decided_by", "amendment"])
    audit_append(
        actor=actor,
        action=events.ACCESS_REQUEST_APPROVED,
        target=access_request,
        data={
            "checkpoints": [c.slug for c in access_request.checkpoints.order_by("parameter_count")],
            "agreement": amendment.reference,
        },
    )
    slugs = ", ".join(c.slug for c in access_request.checkpoints.order_by("parameter_count"))
    _notify_request_decided(
        access_request,
        title=f"Access request #{access_request.pk} approved: {slugs}",
        body=(
            f"The lab approved {access_request.organization.name}'s request for {slugs}. Legal is preparing "
            f"{amendment.reference}; access starts once your signatory signs it and the lab countersigns."
        ),
    )
    return access_request


@transaction.atomic
def access_request_reject(*, actor: User, access_request: AccessRequest, reason: str) -> AccessRequest:
    """Reject with a reason the partner sees; they may apply again."""
    require_role(actor, *REQUEST_REVIEWERS)
    reason = clean_reason(reason, required=True, what="the partner sees it")
    access_request = _lock_pending(access_request)
    access_request.status = AccessRequest.Status.REJECTED
    access_request.decided_at = timezone.now()
    access_request.decided_by = actor
    access_request.decision_reason = reason
    access_request.save(update_fields=["status", "decided_at", "decided_by", "decision_reason"])
    audit_append(actor=actor, action=events.ACCESS_REQUEST_REJECTED, target=access_request, data={"reason": reason})
    slugs = ", ".join(c.slug for c in access_request.checkpoints.order_by("parameter_count"))
    _notify_request_decided(
        access_request,
        title=f"Access request #{access_request.pk} rejected: {slugs}",
        body=(
            f"The lab rejected {access_request.organization.name}'s request for {slugs}. The lab's reason: {reason}\n"
            "You may request access again."
        ),
    )
    return access_request


# --- Obligations: scheduled when an agreement becomes active, fulfilled by reports, extended by the lab ---

MAX_EXTENSION_DAYS = 365


def _obligation_create(
    *,
    agreement: Agreement,
    kind: str,
    due_at: datetime,
    description: str,
    checkpoint: Checkpoint | None = None,
) -> Obligation:
    return Obligation.objects.create(
        agreement=agreement,
        organization_id=agreement.organization_id,
        kind=kind,
        checkpoint=checkpoint,
        description=description,
        due_at=due_at,
        original_due_at=due_at,
    )


def _obligation_waive(obligation: Obligation, *, actor: User | None, reason: str, now: datetime) -> None:
    """Nothing is owed any more (a replaced final report, a report not yet due when the agreement ended)."""
    obligation.waived_at = now
    obligation.waive_reason = reason[:300]
    obligation.save(update_fields=["waived_at", "waive_reason"])
    audit_append(
        actor=actor,
        action=events.OBLIGATION_WAIVED,
        target=obligation,
        organization=obligation.organization,
        data={"obligation": obligation.reference, "due_at": obligation.due_at.isoformat(), "reason": reason},
    )


@transaction.atomic
def obligations_schedule(
    *, agreement: Agreement, actor: User | None, superseded: Agreement | None = None
) -> list[Obligation]:
    """Schedule what an agreement that just became active asks of its partner, from its template's terms.

    A findings report falls due N days after each checkpoint's grant starts (once per checkpoint: an
    amendment that grants gpt2 again does not restart the clock), and a final report D days before the
    term ends. An amendment that replaces its agreement takes over the open findings reports and brings
    its own final report, so the replaced one is waived. A checkpoint released to the public is owed no
    findings report: there is no further stage for the lab to decide on.
    """
    version = agreement.template_version
    organization = agreement.organization
    now = timezone.now()
    moved: list[str] = []
    if superseded is not None:
        for old in Obligation.objects.select_for_update().filter(
            agreement=superseded, fulfilled_at=None, waived_at=None
        ):
            if old.kind == Obligation.Kind.FINAL_REPORT:
                reason = f"replaced by the final report under {agreement.reference}"
                _obligation_waive(old, actor=actor, reason=reason, now=now)
            else:
                old.agreement = agreement
                old.save(update_fields=["agreement"])
                moved.append(old.reference)
    reported = set(
        Obligation.objects.filter(organization=organization, kind=Obligation.Kind.FINDINGS_REPORT).values_list(
            "checkpoint_id", flat=True
        )
    )
    created = []
    grants = agreement.grants.filter(checkpoint__public_since=None).select_related("checkpoint")
    for grant in grants.order_by("checkpoint__parameter_count"):
        if grant.checkpoint_id in reported:
            continue
        created.append(
            _obligation_create(
                agreement=agreement,
                kind=Obligation.Kind.FINDINGS_REPORT,
                checkpoint=grant.checkpoint,
                due_at=grant.starts_at + timedelta(days=version.findings_report_days),
                description=f"Findings report on {grant.checkpoint.slug}",
            )
        )
    starts, ends = day_start(agreement.effective_date), day_start(agreement.end_date)
    # A short term still leaves the partner half of it to write the final report.
    final_due = max(ends - timedelta(days=version.final_report_days), starts + (ends - starts) / 2)
    created.append(
        _obligation_create(
            agreement=agreement,
            kind=Obligation.Kind.FINAL_REPORT,
            due_at=final_due,
            description=f"Final report under {agreement.reference}",
        )
    )
    audit_append(
        actor=actor,
        action=events.OBLIGATIONS_SCHEDULED,
        target=agreement,
        data={
            "obligations": [
                {"reference": o.reference, "kind": o.kind, "due_at": o.due_at.isoformat(), "what": o.description}
                for o in created
            ],
            "taken_over": moved,
        },
    )
    return created


def _obligations_waive_for_ended(*, agreement: Agreement, actor: User | None) -> None:
    """An agreement ended (terminated, expired): what was not yet due is no longer owed, so nobody is
    reminded of it or paused by it. A report already overdue stays owed: it was due while the agreement
    was in force."""
    now = timezone.now()
    pending = Obligation.objects.select_for_update().filter(
        agreement=agreement, fulfilled_at=None, waived_at=None, due_at__gt=now
    )
    reason = f"{agreement.reference} ended ({agreement.get_status_display().lower()}) before it was due"
    for obligation in pending.select_related("organization"):
        _obligation_waive(obligation, actor=actor, reason=reason, now=now)


def _lock_open(obligation: Obligation) -> Obligation:
    obligation = (
        Obligation.objects.select_for_update().select_related("organization", "agreement").get(pk=obligation.pk)
    )
    if not obligation.is_open:
        state = "fulfilled" if obligation.fulfilled_at else "waived"
        raise ValidationError(f"{obligation.reference} is already {state}.")
    return obligation


def _mark_fulfilled(obligation: Obligation, *, actor: User, fulfilment: str) -> None:
    """Fulfilled now by `actor`, audited with whether it came late."""
    obligation.fulfilled_at = timezone.now()
    obligation.fulfilled_by = actor
    obligation.fulfilment = fulfilment[:300]
    obligation.save(update_fields=["fulfilled_at", "fulfilled_by", "fulfilment"])
    audit_append(
        actor=actor,
        action=events.OBLIGATION_FULFILLED,
        target=obligation,
        organization=obligation.organization,
        data={
            "obligation": obligation.reference,
            "kind": obligation.kind,
            "due_at": obligation.due_at.isoformat(),
            "late": obligation.fulfilled_late,
            "by": fulfilment,
        },
    )


@transaction.atomic
def obligation_fulfil(*, actor: User, obligation: Obligation, fulfilment: str) -> Obligation:
    """Mark a report obligation met (a finding that says it fulfils it). Access paused by it resumes."""
    if role_of(actor) not in PARTNER_ROLES or actor.membership.organization_id != obligation.organization_id:
        raise PermissionDenied("Only the organisation that owes a report fulfils it.")
    fulfilment = fulfilment.strip()
    if not fulfilment:
        raise ValidationError("Say what fulfils the obligation (a finding's reference).")
    obligation = _lock_open(obligation)
    was_overdue = obligation.is_overdue(timezone.now())
    _mark_fulfilled(obligation, actor=actor, fulfilment=fulfilment)
    if was_overdue and obligation.pauses_access:
        _notify_access_resumed(obligation, f"{fulfilment} fulfilled it")
    return obligation


@transaction.atomic
def obligation_record_kept(
    *,
    actor: User,
    agreement: Agreement,
    kind: str,
    due_at: datetime,
    description: str,
    fulfilment: str,
    checkpoint: Checkpoint | None = None,
) -> Obligation:
    """Record an obligation that arose and was met in the same act: an incident reported (due H hours after
    its discovery) or a paper shared for review. Whether it was met in time stays on the row."""
    obligation = _obligation_create(
        agreement=agreement, kind=kind, due_at=due_at, description=description, checkpoint=checkpoint
    )
    _mark_fulfilled(obligation, actor=actor, fulfilment=fulfilment)
    return obligation


@transaction.atomic
def obligation_extend(*, actor: User, obligation: Obligation, due_on: date | None, reason: str) -> Obligation:
    """The lab moves a due date later, with a reason the partner and auditors read; access paused by it resumes.

    The new date is a UTC day: the report is due at its start (00:00 UTC), as scheduled ones are.
    """
    require_role(actor, *OBLIGATION_MANAGERS)
    obligation = _lock_open(obligation)
    now = timezone.now()
    errors: dict[str, str] = {}
    try:
        reason = clean_reason(reason, required=True, what="the partner and auditors see it")
    except ValidationError as exc:
        errors.update({field: " ".join(messages) for field, messages in exc.message_dict.items()})
    new_due = day_start(due_on) if due_on is not None else None
    if new_due is None:
        errors["due_on"] = "Choose the new due date."
    elif new_due <= obligation.due_at or new_due <= now:
        earliest = max(obligation.due_at, now).astimezone(UTC).date() + timedelta(days=1)
        errors["due_on"] = (
            f"Choose a day after the current due date ({obligation.due_at:%Y-%m-%d}) and after today: "
            f"{earliest:%Y-%m-%d} or later."
        )
    elif new_due > now + timedelta(days=MAX_EXTENSION_DAYS):
        errors["due_on"] = f"An extension reaches at most {MAX_EXTENSION_DAYS} days ahead."
    if errors:
        raise ValidationError(errors)
    assert new_due is not None
    was_overdue = obligation.is_overdue(now)
    previous = obligation.due_at
    obligation.due_at = new_due
    obligation.extended_at = now
    obligation.extended_by = actor
    obligation.extension_reason = reason
    obligation.overdue_at = None
    obligation.reminded_at = None
    obligation.save(
        update_fields=["due_at", "extended_at", "extended_by", "extension_reason", "overdue_at", "reminded_at"]
    )
    audit_append(
        actor=actor,
        action=events.OBLIGATION_EXTENDED,
        target=obligation,
        organization=obligation.organization,
        data={
            "obligation": obligation.reference,
            "from": previous.isoformat(),
            "to": new_due.isoformat(),
            "reason": reason,
            "was_overdue": was_overdue,
        },
    )
    if was_overdue and obligation.pauses_access:
        _notify_access_resumed(obligation, f"the lab extended it to {new_due:%Y-%m-%d}: {reason}")
    else:
        _notify_obligation(
            obligation,
            kind=NotificationKind.OBLIGATION_DUE,
            title=f"{obligation.description} is now due on {new_due:%Y-%m-%d}",
            body=f"The lab extended {obligation.reference} from {previous:%Y-%m-%d} to {new_due:%Y-%m-%d}: {reason}",
            occasion=f"extended:{now.timestamp():.0f}",
        )
    return obligation


def _obligation_audience(obligation: Obligation) -> list[User]:
    return list(
        User.objects.filter(
            is_active=True,
            membership__organization_id=obligation.organization_id,
            membership__role__in=PARTNER_ROLES,
        )
    )


def _lab_audience() -> list[User]:
    return list(User.objects.filter(is_active=True, membership__role__in=OBLIGATION_MANAGERS))


def _notify_obligation(
    obligation: Obligation, *, kind: str, title: str, body: str, occasion: str, lab_too: bool = False
) -> None:
    users = _obligation_audience(obligation) + (_lab_audience() if lab_too else [])
    notifications_send(
        users=users,
        kind=kind,
        title=title,
        body=body,
        url=reverse("obligation_detail", args=[obligation.pk]),
        dedupe_key=f"obligation.{occasion}:{obligation.pk}",
    )


def _notify_access_resumed(obligation: Obligation, how: str) -> None:
    _notify_obligation(
        obligation,
        kind=NotificationKind.ACCESS_PAUSED,
        title=f"Access resumed for {obligation.organization.name}",
        body=f"{obligation.description} ({obligation.reference}) no longer pauses access: {how}.",
        occasion=f"resumed:{timezone.now().timestamp():.0f}",
        lab_too=True,
    )


@transaction.atomic
def obligation_remind(*, obligation: Obligation, now: datetime) -> bool:
    """Tell the partner a report is due soon, once per due date; False when that was done or it is met."""
    obligation = (
        Obligation.objects.select_for_update().select_related("organization", "agreement").get(pk=obligation.pk)
    )
    if not obligation.is_open or obligation.reminded_at is not None or obligation.due_at <= now:
        return False
    obligation.reminded_at = now
    obligation.save(update_fields=["reminded_at"])
    audit_append(
        actor=None,
        action=events.OBLIGATION_REMINDED,
        target=obligation,
        organization=obligation.organization,
        data={"obligation": obligation.reference, "due_at": obligation.due_at.isoformat()},
    )
    pause = (
        " If it is not received by then, your organisation's access pauses until it is."
        if obligation.pauses_access
        else ""
    )
    _notify_obligation(
        obligation,
        kind=NotificationKind.OBLIGATION_DUE,
        title=f"Due on {obligation.due_at:%Y-%m-%d}: {obligation.description}",
        body=f"{obligation.reference} under {obligation.agreement.reference} is due on "
        f"{obligation.due_at:%Y-%m-%d %H:%M} UTC.{pause} Submit it as a finding that says it fulfils this obligation.",
        occasion=f"reminder:{obligation.due_at.timestamp():.0f}",
    )
    return True


@transaction.atomic
def obligation_mark_overdue(*, obligation: Obligation, now: datetime) -> bool:
    """Record the day a report lapsed (access_check already refuses from that moment) and tell both sides."""
    obligation = (
        Obligation.objects.select_for_update().select_related("organization", "agreement").get(pk=obligation.pk)
    )
    if not obligation.is_overdue(now) or obligation.overdue_at is not None:
        return False
    obligation.overdue_at = now
    obligation.save(update_fields=["overdue_at"])
    audit_append(
        actor=None,
        action=events.OBLIGATION_OVERDUE,
        target=obligation,
        organization=obligation.organization,
        data={
            "obligation": obligation.reference,
            "due_at": obligation.due_at.isoformat(),
            "access_paused": obligation.pauses_access,
        },
    )
    if obligation.pauses_access:
        _notify_obligation(
            obligation,
            kind=NotificationKind.ACCESS_PAUSED,
            title=f"Access paused for {obligation.organization.name}: {obligation.description} is overdue",
            body=f"{obligation.reference} under {obligation.agreement.reference} was due on "
            f"{obligation.due_at:%Y-%m-%d %H:%M} UTC. Until it is received, or the lab extends it, no new job "
            "starts on any checkpoint. The term of the agreement is not extended by the pause.",
            occasion=f"overdue:{obligation.due_at.timestamp():.0f}",
            lab_too=True,
        )
    return True


def obligations_check_due(*, now: datetime | None = None) -> dict[str, list[str]]:
    """Beat: remind partners of reports due within OBLIGATION_REMINDER_DAYS, and record the ones that lapsed.

    Each obligation is its own transaction, so one that fails does not hold back the others; a second
    run finds them reminded or marked and does nothing.
    """
    now = now or timezone.now()
    open_ = Obligation.objects.filter(fulfilled_at=None, waived_at=None)
    soon = now + timedelta(days=settings.OBLIGATION_REMINDER_DAYS)
    reminded = [
        o.reference
        for o in open_.filter(reminded_at=None, due_at__gt=now, due_at__lte=soon).order_by("due_at", "pk")
        if obligation_remind(obligation=o, now=now)
    ]
    overdue = [
        o.reference
        for o in open_.filter(overdue_at=None, due_at__lte=now).order_by("due_at", "pk")
        if obligation_mark_overdue(obligation=o, now=now)
    ]
    return {"reminded": reminded, "overdue": overdue}
