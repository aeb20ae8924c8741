"""Pages for agreement templates, agreements and signing.

Each view gets its objects through a selector (another organisation's agreement is 404, a role that
may not act is 403), calls one service, and shows the service's ValidationError next to the field it
names, or as a message when it names none.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.dateformat import format as date_format
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from accounts.models import LAB_ROLES, PARTNER_ROLES, Organization, Role, User
from accounts.permissions import REAUTH_WINDOW, has_role, request_user, require_role, role_of
from accounts.selectors import organization_list
from accounts.views import apply_validation_error, reauthentication_links, recent_authentication
from agreements import rendering, selectors, services
from agreements.forms import (
    AccessRequestForm,
    AgreementFilterForm,
    AgreementForm,
    DiffForm,
    ObligationExtendForm,
    ObligationTermsForm,
    ReasonForm,
    RejectForm,
    SignForm,
    TemplateCreateForm,
    TemplateVersionForm,
)
from agreements.models import (
    OBLIGATION_TERM_RANGES,
    AccessRequest,
    Agreement,
    AgreementTemplate,
    Obligation,
    Signature,
    TemplateVersion,
)
from audit.middleware import client_ip
from models_registry import selectors as registry_selectors
from models_registry.forms import CheckpointStatusForm
from models_registry.models import Checkpoint

DEFAULT_TEMPLATE_PATH = Path(__file__).resolve().parent / "default_template.md"


@functools.cache
def default_template_body() -> str:
    return DEFAULT_TEMPLATE_PATH.read_text(encoding="utf-8")


def _error_text(error: ValidationError) -> str:
    return " ".join(error.messages)


def _posted(request: HttpRequest) -> QueryDict | None:
    """The submitted data on POST (even if empty, so a blank submission shows what is missing), else None."""
    return request.POST if request.method == "POST" else None


def _normalised(body: str | None) -> str:
    return (body or "").replace("\r\n", "\n")


def _can_edit_templates(user: User) -> bool:
    return role_of(user) in selectors.TEMPLATE_EDITORS


def _can_manage_agreements(user: User) -> bool:
    return role_of(user) in selectors.AGREEMENT_MANAGERS


# --- Templates --------------------------------------------------------------------------------------


def _editor_context(body: str, terms: Mapping[str, int | None]) -> dict[str, object]:
    """The placeholder list and the first preview, so the page is complete before any keystroke."""
    return {
        "placeholders": list(rendering.PLACEHOLDERS.items()),
        **_preview_context(body, terms, editing=True),
    }


def _preview_context(body: str, terms: Mapping[str, int | None], *, editing: bool = False) -> dict[str, object]:
    return {
        "editing": editing,
        # render_markdown returns sanitised HTML with every value escaped.
        "preview_html": mark_safe(rendering.render_markdown(body, rendering.sample_values(terms))),
        "problems": rendering.check_template(body),
        # Saving allows them; publishing needs every one, so the editor says so before legal tries.
        "unstated_terms": rendering.obligation_placeholders_missing(body) if editing and body.strip() else [],
    }


def _typed_terms(form: ObligationTermsForm) -> dict[str, int | None]:
    """The terms as typed (a bound form) or as they are (unbound), each None where it is not a whole number."""
    if not form.is_bound:
        return {name: form.initial.get(name) for name in OBLIGATION_TERM_RANGES}
    values: dict[str, int | None] = {}
    for name in OBLIGATION_TERM_RANGES:
        try:
            values[name] = form.fields[name].clean(form[name].data)
        except ValidationError:
            values[name] = None
    return values


def _term_rows(version: TemplateVersion) -> list[dict[str, object]]:
    """The version's obligation terms as a published page lists them (label, value, placeholder)."""
    form = ObligationTermsForm()
    return [
        {"label": form.fields[name].label, "value": value, "placeholder": f"obligations.{name}", "name": name}
        for name, value in version.obligation_terms.items()
    ]


@login_required
def template_list(request: HttpRequest) -> HttpResponse:
    templates = selectors.template_list(user=request_user(request))
    context = {"templates": templates, "can_edit": _can_edit_templates(request_user(request))}
    return render(request, "agreements/template_list.html", context)


@login_required
def template_create(request: HttpRequest) -> HttpResponse:
    require_role(request.user, *selectors.TEMPLATE_EDITORS)
    initial = {"body": default_template_body(), **ObligationTermsForm.initial_for(None)}
    form = TemplateCreateForm(_posted(request), initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            version = services.template_create(
                actor=request_user(request),
                name=data["name"],
                description=data["description"],
                body=data["body"],
                terms=form.terms(),
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, f"{version.template.name} created with draft {version.label}.")
            return redirect("template_version", pk=version.pk)
    context = {"form": form, **_editor_context(_normalised(form["body"].value()), _typed_terms(form))}
    return render(request, "agreements/template_form.html", context, status=400 if form.errors else 200)


@login_required
def template_detail(request: HttpRequest, pk: int) -> HttpResponse:
    template = selectors.template_get(user=request_user(request), pk=pk)
    versions = list(template.versions.select_related("created_by", "published_by").order_by("-number"))
    draft = next((v for v in versions if v.is_draft), None)
    context = {
        "template": template,
        "versions": versions,
        "draft": draft,
        "latest": versions[0] if versions else None,
        "can_edit": _can_edit_templates(request_user(request)),
        "diff_form": _default_diff_form(template, versions),
    }
    return render(request, "agreements/template_detail.html", context)


def _default_diff_form(template: AgreementTemplate, versions: list[TemplateVersion]) -> DiffForm | None:
    if len(versions) < 2:
        return None
    initial = {"left": versions[1].pk, "right": versions[0].pk}
    return DiffForm(initial=initial, versions=template.versions.order_by("-number"))


@login_required
def template_version_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """A draft opens in the editor (for editors); a published or retired version is read-only."""
    version = selectors.template_version_get(user=request_user(request), pk=pk)
    can_edit = _can_edit_templates(request_user(request))
    editable = version.is_draft and can_edit
    if request.method == "POST" and not editable:
        require_role(request.user, *selectors.TEMPLATE_EDITORS)
        messages.error(request, f"{version} is {version.get_status_display().lower()} and can no longer change.")
        return redirect("template_version", pk=version.pk)
    initial = {"body": version.body, **ObligationTermsForm.initial_for(version)}
    form = TemplateVersionForm(_posted(request), initial=initial) if editable else None
    if form is not None and request.method == "POST" and form.is_valid():
        try:
            # Publish saves the text and terms on screen first: what legal sees is what is published.
            save = (
                services.template_version_save_and_publish
                if "publish" in request.POST
                else services.template_version_save
            )
            version = save(
                actor=request_user(request), version=version, body=form.cleaned_data["body"], terms=form.terms()
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            if version.status == TemplateVersion.Status.PUBLISHED:
                messages.success(request, f"{version} published. Its text is now fixed; SHA-256 {version.sha256}.")
            else:
                messages.success(request, f"Draft {version.label} saved.")
            return redirect("template_version", pk=version.pk)
    body = _normalised(form["body"].value()) if form is not None else version.body
    # Compare with the nearest other version, the older one on the left.
    other = version.template.versions.exclude(pk=version.pk).order_by("-number").first()
    compare = None
    if other is not None:
        left, right = (other, version) if other.number < version.number else (version, other)
        compare = {"label": other.label, "query": urlencode({"left": left.pk, "right": right.pk})}
    context = {
        "version": version,
        "template": version.template,
        "form": form,
        "can_edit": can_edit,
        "compare": compare,
        "term_rows": _term_rows(version),
        **(
            _editor_context(body, _typed_terms(form))
            if form is not None
            else _preview_context(version.body, version.obligation_terms)
        ),
    }
    return render(request, "agreements/version_detail.html", context, status=400 if form and form.errors else 200)


@login_required
@require_POST
def template_preview(request: HttpRequest) -> HttpResponse:
    """The editor's live preview (htmx): the same renderer as the final document, with sample values."""
    require_role(request.user, *selectors.TEMPLATE_EDITORS)
    form = TemplateVersionForm(request.POST)
    body = form.cleaned_data["body"] if form.is_valid() else ""
    return render(request, "agreements/_preview.html", _preview_context(body, _typed_terms(form), editing=True))


@login_required
@require_POST
def template_version_publish(request: HttpRequest, pk: int) -> HttpResponse:
    version = selectors.template_version_get(user=request_user(request), pk=pk)
    try:
        version = services.template_version_publish(actor=request_user(request), version=version)
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(request, f"{version} published. Its text is now fixed; SHA-256 {version.sha256}.")
    return redirect("template_version", pk=version.pk)


@login_required
@require_POST
def template_version_retire(request: HttpRequest, pk: int) -> HttpResponse:
    version = selectors.template_version_get(user=request_user(request), pk=pk)
    try:
        version = services.template_version_retire(actor=request_user(request), version=version)
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(request, f"{version} retired: no new agreements can be made from it.")
    return redirect("template_version", pk=version.pk)


@login_required
@require_POST
def template_new_draft(request: HttpRequest, pk: int) -> HttpResponse:
    template = selectors.template_get(user=request_user(request), pk=pk)
    version = services.template_version_new_draft(actor=request_user(request), template=template)
    messages.success(request, f"Draft {version.label} of {template.name} is open for editing.")
    return redirect("template_version", pk=version.pk)


@login_required
def template_diff(request: HttpRequest, pk: int) -> HttpResponse:
    template = selectors.template_get(user=request_user(request), pk=pk)
    versions = template.versions.order_by("-number")
    form = DiffForm(request.GET or None, versions=versions)
    shown: DiffForm | None = form  # None when there are not two versions to compare yet
    rows: list[dict[str, object]] = []
    left, right, changed = None, None, 0
    whole = request.GET.get("context") == "all"
    if form.is_bound and form.is_valid():
        left, right = form.cleaned_data["left"], form.cleaned_data["right"]
        diff = rendering.render_diff(left.body, right.body)
        changed = rendering.diff_changed_lines(diff)
        # The changes first, with a few lines around each; "Show the whole document" lists every line.
        rows = [
            {
                "kind": row.kind,
                "left_no": row.left_no,
                "right_no": row.right_no,
                # render_diff escapes each line before wrapping changes in <del>/<ins>.
                "left_html": mark_safe(row.left_html),
                "right_html": mark_safe(row.right_html),
            }
            for row in (diff if whole else rendering.diff_collapsed(diff))
        ]
        first = next((row for row in rows if row["kind"] not in ("equal", "skip")), None)
        if first is not None:
            first["anchor"] = "change-1"
    elif not form.is_bound:
        shown = _default_diff_form(template, list(versions))
    context = {
        "template": template,
        "form": shown,
        "term_changes": _term_changes(left, right) if left and right else [],
        "rows": rows,
        "left": left,
        "right": right,
        "changed": changed,
        "whole": whole,
        "whole_query": urlencode({**request.GET.dict(), "context": "all"}),
        "collapsed_query": urlencode({k: v for k, v in request.GET.dict().items() if k != "context"}),
    }
    return render(request, "agreements/template_diff.html", context, status=400 if shown and shown.errors else 200)


def _term_changes(left: TemplateVersion, right: TemplateVersion) -> list[dict[str, object]]:
    """The obligation terms that differ between two versions, as the comparison lists them."""
    return [
        {**row, "left": left.obligation_terms[str(row["name"])]}
        for row in _term_rows(right)
        if left.obligation_terms[str(row["name"])] != row["value"]
    ]


# --- Agreements -------------------------------------------------------------------------------------


def _partner_organizations(user: User) -> QuerySet[Organization]:
    return organization_list(user=user).filter(kind=Organization.Kind.PARTNER, active=True)


def _agreement_form(request: HttpRequest, *, agreement: Agreement | None = None, **kwargs: Any) -> AgreementForm:
    return AgreementForm(
        request.POST if request.method == "POST" else None,
        organizations=None if agreement else _partner_organizations(request_user(request)),
        versions=selectors.published_versions().order_by("template__name", "-number"),
        checkpoints=selectors.grantable_checkpoints(),
        amendment=bool(agreement and agreement.amends_id),
        **kwargs,
    )


@login_required
def agreement_list(request: HttpRequest) -> HttpResponse:
    role = role_of(request.user)
    is_lab = role in LAB_ROLES
    statuses = [c for c in Agreement.Status.choices if is_lab or c[0] != Agreement.Status.DRAFT]
    form = AgreementFilterForm(
        request.GET or None,
        organizations=organization_list(user=request_user(request)).filter(kind=Organization.Kind.PARTNER)
        if is_lab
        else None,
        statuses=statuses,
    )
    filters = {}
    if form.is_bound and form.is_valid():
        filters = {"organization": form.cleaned_data.get("organization"), "status": form.cleaned_data["status"]}
    agreements = selectors.agreement_list(user=request_user(request), **filters)
    if form.errors:
        agreements = agreements.none()
    page = Paginator(agreements, 25).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "query": query.urlencode(),
        "is_lab": is_lab,
        "can_manage": role in selectors.AGREEMENT_MANAGERS,
        "is_partner": role in PARTNER_ROLES,
    }
    return render(request, "agreements/agreement_list.html", context, status=400 if form.errors else 200)


@login_required
def agreement_create(request: HttpRequest) -> HttpResponse:
    require_role(request.user, *selectors.AGREEMENT_MANAGERS)
    initial = {"effective_date": timezone.now().date(), "term_months": 12, "daily_token_quota": 50_000}
    versions = selectors.published_versions().order_by("template__name", "-number")
    if len(versions) == 1:
        initial["template_version"] = versions[0].pk
    if str(request.GET.get("organization", "")).isdigit():
        initial["organization"] = int(request.GET["organization"])
    form = _agreement_form(request, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            agreement = services.agreement_create(actor=request_user(request), **form.service_kwargs())
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, f"Draft {agreement.reference} created. Check the document below, then send it.")
            return redirect("agreement_detail", pk=agreement.pk)
    context = {"form": form, "title": "New agreement", "has_versions": bool(versions)}
    return render(request, "agreements/agreement_form.html", context, status=400 if form.errors else 200)


@login_required
def agreement_edit(request: HttpRequest, pk: int) -> HttpResponse:
    agreement = selectors.agreement_get(user=request_user(request), pk=pk)
    require_role(request.user, *selectors.AGREEMENT_MANAGERS)
    if not agreement.is_editable:
        messages.error(request, f"{agreement.reference} was sent and can no longer change; void it and draft again.")
        return redirect("agreement_detail", pk=agreement.pk)
    form = _agreement_form(request, agreement=agreement, initial=AgreementForm.initial_for(agreement))
    if request.method == "POST" and form.is_valid():
        try:
            services.agreement_update(actor=request_user(request), agreement=agreement, **form.service_kwargs())
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, f"{agreement.reference} saved. Check the document below, then send it.")
            return redirect("agreement_detail", pk=agreement.pk)
    context = {"form": form, "agreement": agreement, "title": f"Edit {agreement.reference}", "has_versions": True}
    return render(request, "agreements/agreement_form.html", context, status=400 if form.errors else 200)


def _timeline(agreement: Agreement) -> list[tuple[str, datetime, str]]:
    """(what happened, when, detail) in order; only the steps that have happened."""
    entries = [("Drafted", agreement.created_at, f"by {agreement.created_by.get_full_name()}")]
    if agreement.sent_at:
        due_at = agreement.signature_due_at
        due = f"to be signed by {date_format(due_at, 'j M Y')}" if due_at else ""
        entries.append(("Sent for signature", agreement.sent_at, due))
    if agreement.last_reminder_at:
        entries.append(("Reminder sent", agreement.last_reminder_at, f"{agreement.reminders_sent} in all"))
    if agreement.first_viewed_at:
        entries.append(("First viewed by the partner", agreement.first_viewed_at, ""))
    if agreement.partner_signed_at:
        entries.append(("Signed by the partner", agreement.partner_signed_at, ""))
    if agreement.activated_at:
        entries.append(("Countersigned by the lab; active", agreement.activated_at, ""))
    if agreement.ended_at:
        entries.append((agreement.get_status_display(), agreement.ended_at, agreement.end_reason))
    return sorted(entries, key=lambda entry: entry[1])


def _render_detail(
    request: HttpRequest,
    agreement: Agreement,
    *,
    void_form: ReasonForm | None = None,
    terminate_form: ReasonForm | None = None,
    status: int = 200,
) -> HttpResponse:
    role = role_of(request.user)
    manager = role in selectors.AGREEMENT_MANAGERS
    signatory = role == Role.SIGNATORY
    signatures = selectors.agreement_signatures(agreement)
    document_html = (
        selectors.agreement_document_as_signed(agreement, signatures)
        if signatures
        else selectors.agreement_render(agreement)
    )
    context = {
        "agreement": agreement,
        # Sanitised when rendered (and, once sent, frozen): exactly the HTML that is signed.
        "document_html": mark_safe(document_html),
        "missing_values": [] if agreement.document_html else selectors.missing_values(document_html),
        "checkpoints": sorted(agreement.checkpoints.all(), key=lambda c: c.parameter_count),
        "signatures": signatures,
        "timeline": _timeline(agreement),
        "amendments": selectors.agreement_list(user=request_user(request)).filter(amends=agreement),
        # What the agreement asks of its partner (scheduled when it became active; taken over by amendments).
        "obligations": selectors.obligation_list(user=request_user(request)).filter(agreement=agreement),
        "can_manage": manager,
        "is_lab": role in LAB_ROLES,
        "can_edit": manager and agreement.is_editable,
        "can_send": manager and agreement.can("send"),
        "can_void": manager and agreement.can("void"),
        "can_terminate": manager and agreement.can("terminate"),
        "can_amend": manager and agreement.status == Agreement.Status.ACTIVE,
        "can_countersign": manager and agreement.can("countersign"),
        "can_sign": signatory and agreement.can("partner_sign"),
        "void_form": void_form or _void_form(),
        "terminate_form": terminate_form or _terminate_form(),
    }
    return render(request, "agreements/agreement_detail.html", context, status=status)


def _void_form(data: object = None) -> ReasonForm:
    return ReasonForm(data, prefix="void", label="Reason (optional)", help_text="Shown to the partner if it was sent.")


def _terminate_form(data: object = None) -> ReasonForm:
    return ReasonForm(data, prefix="terminate", label="Reason", help_text="Required; the partner sees it.")


@login_required
def agreement_detail(request: HttpRequest, pk: int) -> HttpResponse:
    agreement = selectors.agreement_get(user=request_user(request), pk=pk)
    if role_of(request.user) in PARTNER_ROLES:
        agreement = services.agreement_mark_viewed(actor=request_user(request), agreement=agreement)
    return _render_detail(request, agreement)


def _state_error_or_form(request: HttpRequest, agreement: Agreement, form: ReasonForm, exc: ValidationError) -> bool:
    """Put a field error on the form (True); a refusal about the agreement's state becomes a message."""
    if hasattr(exc, "error_dict"):
        apply_validation_error(form, exc)
        return True
    messages.error(request, _error_text(exc))
    return False


@login_required
@require_POST
def agreement_send(request: HttpRequest, pk: int) -> HttpResponse:
    agreement = selectors.agreement_get(user=request_user(request), pk=pk)
    try:
        agreement = services.agreement_send(actor=request_user(request), agreement=agreement)
    except ValidationError as exc:
        messages.error(request, f"{agreement.reference} was not sent. {_error_text(exc)}")
    else:
        messages.success(
            request,
            f"{agreement.reference} sent. {agreement.organization.name}'s signatories have been emailed a link.",
        )
    return redirect("agreement_detail", pk=agreement.pk)


@login_required
@require_POST
def agreement_void(request: HttpRequest, pk: int) -> HttpResponse:
    agreement = selectors.agreement_get(user=request_user(request), pk=pk)
    form = _void_form(request.POST)
    if form.is_valid():
        try:
            services.agreement_void(
                actor=request_user(request), agreement=agreement, reason=form.cleaned_data["reason"]
            )
        except ValidationError as exc:
            if not _state_error_or_form(request, agreement, form, exc):
                return redirect("agreement_detail", pk=agreement.pk)
        else:
            messages.success(request, f"{agreement.reference} voided; it can no longer be signed.")
            return redirect("agreement_detail", pk=agreement.pk)
    return _render_detail(request, agreement, void_form=form, status=400)


@login_required
@require_POST
def agreement_terminate(request: HttpRequest, pk: int) -> HttpResponse:
    agreement = selectors.agreement_get(user=request_user(request), pk=pk)
    form = _terminate_form(request.POST)
    if form.is_valid():
        try:
            services.agreement_terminate(
                actor=request_user(request), agreement=agreement, reason=form.cleaned_data["reason"]
            )
        except ValidationError as exc:
            if not _state_error_or_form(request, agreement, form, exc):
                return redirect("agreement_detail", pk=agreement.pk)
        else:
            messages.success(request, f"{agreement.reference} terminated; the access it granted has ended.")
            return redirect("agreement_detail", pk=agreement.pk)
    return _render_detail(request, agreement, terminate_form=form, status=400)


@login_required
@require_POST
def agreement_amend(request: HttpRequest, pk: int) -> HttpResponse:
    agreement = selectors.agreement_get(user=request_user(request), pk=pk)
    try:
        amendment = services.agreement_amend(actor=request_user(request), agreement=agreement)
    except ValidationError as exc:
        messages.error(request, f"No amendment was drafted. {_error_text(exc)}")
        return redirect("agreement_detail", pk=agreement.pk)
    messages.success(
        request, f"Amendment {amendment.reference} drafted from {agreement.reference}. Change its terms, then send it."
    )
    return redirect("agreement_edit", pk=amendment.pk)


# --- Signing ----------------------------------------------------------------------------------------


@login_required
def agreement_sign(request: HttpRequest, pk: int) -> HttpResponse:
    """Sign for the partner (signatory) or countersign for the lab (legal): the same page and checks."""
    agreement = selectors.agreement_get(user=request_user(request), pk=pk)
    side = selectors.signing_side(user=request_user(request), agreement=agreement)
    if not agreement.can(selectors.SIGNING_STEPS[side]):
        messages.info(
            request,
            f"{agreement.reference} is {agreement.get_status_display().lower()}; "
            f"it is not waiting for your {'signature' if side == Signature.Side.PARTNER else 'countersignature'}.",
        )
        return redirect("agreement_detail", pk=agreement.pk)
    if side == Signature.Side.PARTNER:
        agreement = services.agreement_mark_viewed(actor=request_user(request), agreement=agreement)
    reauth_method, reauth_at = recent_authentication(request)
    initial = {"document_sha256": agreement.document_sha256, "full_name": request_user(request).full_name}
    form = SignForm(_posted(request), initial=initial)
    status = 200
    if form.is_bound and any(name in form.errors for name in ("document_sha256", "time_zone")):
        form.add_error(None, "This page was changed before it was sent. Reload it, read the document and sign again.")
        status = 400
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            services.agreement_sign(
                actor=request_user(request),
                agreement=agreement,
                full_name=data["full_name"],
                title=data["title"],
                consent=data["consent"],
                shown_document_sha256=data["document_sha256"],
                reauth_method=reauth_method,
                reauth_at=reauth_at,
                ip=client_ip(request),
                user_agent=request.META.get("HTTP_USER_AGENT", ""),
                time_zone=data["time_zone"].strip(),
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
            status = 400
            # Nothing was saved. Show the current document and hash, so a retry signs what is on screen.
            agreement.refresh_from_db()
            posted = cast(QueryDict, form.data).copy()
            posted["document_sha256"] = agreement.document_sha256
            form.data = posted
        else:
            if side == Signature.Side.PARTNER:
                messages.success(request, f"You signed {agreement.reference}. The lab countersigns next.")
            else:
                messages.success(request, f"You countersigned {agreement.reference}. It is now active.")
            return redirect("agreement_detail", pk=agreement.pk)
    context = {
        "agreement": agreement,
        "side": side,
        "document_html": mark_safe(agreement.document_html),  # frozen at send, sanitised when rendered
        "consent_text": services.CONSENT_TEXT,
        "consent_sha256": services.CONSENT_SHA256,
        "form": form,
        "reauth_method": reauth_method,
        "reauth_expires": reauth_at + REAUTH_WINDOW if reauth_at else None,
        "reauth_links": reauthentication_links(request) if reauth_at is None else [],
    }
    return render(request, "agreements/agreement_sign.html", context, status=status)


@login_required
def agreement_decline(request: HttpRequest, pk: int) -> HttpResponse:
    agreement = selectors.agreement_get(user=request_user(request), pk=pk)
    require_role(request.user, Role.SIGNATORY)
    if not agreement.can("decline"):
        messages.info(
            request, f"{agreement.reference} is {agreement.get_status_display().lower()}; it cannot be declined."
        )
        return redirect("agreement_detail", pk=agreement.pk)
    form = ReasonForm(_posted(request), label="Why are you declining?", help_text="The lab sees this reason.")
    if request.method == "POST" and form.is_valid():
        try:
            services.agreement_decline(
                actor=request_user(request), agreement=agreement, reason=form.cleaned_data["reason"]
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, f"You declined {agreement.reference}. The lab has been told why.")
            return redirect("agreement_detail", pk=agreement.pk)
    context = {"agreement": agreement, "form": form}
    return render(request, "agreements/agreement_decline.html", context, status=400 if form.errors else 200)


# --- Checkpoints --------------------------------------------------------------------------------


@login_required
def checkpoint_list(request: HttpRequest) -> HttpResponse:
    """Lab staff see the registry; partner users see what their organisation can use and request."""
    if role_of(request.user) in PARTNER_ROLES:
        rows = selectors.partner_checkpoint_overview(user=request_user(request))
        return render(request, "models_registry/checkpoint_partner_list.html", {"rows": rows})
    checkpoints = selectors.checkpoint_registry(user=request_user(request))
    return render(request, "models_registry/checkpoint_list.html", {"checkpoints": checkpoints})


@login_required
def checkpoint_detail(request: HttpRequest, slug: str, status_form: CheckpointStatusForm | None = None) -> HttpResponse:
    checkpoint = registry_selectors.checkpoint_get(user=request_user(request), slug=slug)
    grants = selectors.grant_list_for_checkpoint(user=request_user(request), checkpoint=checkpoint)
    context = {
        "checkpoint": checkpoint,
        "grants": Paginator(grants, 50).get_page(request.GET.get("page")),
        "can_manage": has_role(request.user, Role.LAB_ADMIN),
        "status_form": status_form or CheckpointStatusForm(),
        "now": timezone.now(),
    }
    status = 400 if status_form is not None and status_form.errors else 200
    return render(request, "models_registry/checkpoint_detail.html", context, status=status)


# --- Access requests ----------------------------------------------------------------------------


@login_required
def access_request_list(request: HttpRequest, reject_forms: dict[int, RejectForm] | None = None) -> HttpResponse:
    """Partners: their organisation's requests. Lab staff: the review queue, oldest first."""
    if role_of(request.user) in PARTNER_ROLES:
        requests = selectors.access_request_list(user=request_user(request))
        page = Paginator(requests, 50).get_page(request.GET.get("page"))
        return render(request, "agreements/access_request_list.html", {"page": page})

    queue = list(selectors.access_request_review_queue(user=request_user(request)))
    grants = selectors.organization_live_grants(organization_ids=sorted({r.organization_id for r in queue}))
    reject_forms = reject_forms or {}
    pending = [
        {"request": r, "grants": grants[r.organization_id], "reject_form": reject_forms.get(r.pk, RejectForm())}
        for r in queue
    ]
    decided = selectors.access_request_list(user=request_user(request)).exclude(status=AccessRequest.Status.PENDING)
    context = {
        "pending": pending,
        "decided": Paginator(decided, 25).get_page(request.GET.get("page")),
        "can_review": has_role(request.user, *selectors.REQUEST_REVIEWERS),
    }
    status = 400 if any(form.errors for form in reject_forms.values()) else 200
    return render(request, "agreements/access_request_review.html", context, status=status)


@login_required
def access_request_create(request: HttpRequest) -> HttpResponse:
    require_role(request.user, *PARTNER_ROLES)
    wanted = Checkpoint.objects.filter(slug__in=request.GET.getlist("checkpoint"))
    form = AccessRequestForm(request.POST or None, initial={"checkpoints": list(wanted)})
    if request.method == "POST" and form.is_valid():
        try:
            access_request = services.access_request_create(
                actor=request_user(request),
                checkpoints=list(form.cleaned_data["checkpoints"]),
                purpose=form.cleaned_data["purpose"],
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, f"Request #{access_request.pk} sent. Legal at the lab will review it.")
            return redirect("access_request_detail", pk=access_request.pk)
    context = {
        "form": form,
        # Each checkpoint with what the organisation has now: one it holds or has asked for is not offered.
        "rows": selectors.partner_checkpoint_overview(user=request_user(request)),
        "selected": {str(pk) for pk in form["checkpoints"].value() or []},
    }
    return render(request, "agreements/access_request_form.html", context, status=400 if form.errors else 200)


@login_required
def access_request_detail(request: HttpRequest, pk: int) -> HttpResponse:
    access_request = selectors.access_request_get(user=request_user(request), pk=pk)
    context = {
        "access_request": access_request,
        "can_withdraw": role_of(request.user) in PARTNER_ROLES
        and access_request.status == AccessRequest.Status.PENDING,
        "can_review": has_role(request.user, *selectors.REQUEST_REVIEWERS)
        and access_request.status == AccessRequest.Status.PENDING,
    }
    return render(request, "agreements/access_request_detail.html", context)


@login_required
@require_POST
def access_request_withdraw(request: HttpRequest, pk: int) -> HttpResponse:
    access_request = selectors.access_request_get(user=request_user(request), pk=pk)
    try:
        services.access_request_withdraw(actor=request_user(request), access_request=access_request)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Request #{access_request.pk} withdrawn.")
    return redirect("access_request_detail", pk=access_request.pk)


@login_required
@require_POST
def access_request_approve(request: HttpRequest, pk: int) -> HttpResponse:
    """Approve into a prefilled draft amendment, and open it for legal to finish and send."""
    access_request = selectors.access_request_get(user=request_user(request), pk=pk)
    try:
        access_request = services.access_request_approve(actor=request_user(request), access_request=access_request)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("access_request_list")
    amendment = access_request.amendment
    assert amendment is not None  # approving drafts the amendment
    messages.success(
        request,
        f"Request #{access_request.pk} approved. Check draft {amendment.reference}, then send it for signature.",
    )
    try:
        return redirect(reverse("agreement_detail", args=[amendment.pk]))
    except NoReverseMatch:
        return redirect("access_request_detail", pk=access_request.pk)


@login_required
@require_POST
def access_request_reject(request: HttpRequest, pk: int) -> HttpResponse:
    access_request = selectors.access_request_get(user=request_user(request), pk=pk)
    require_role(request.user, *selectors.REQUEST_REVIEWERS)
    form = RejectForm(request.POST)
    if form.is_valid():
        try:
            services.access_request_reject(
                actor=request_user(request), access_request=access_request, reason=form.cleaned_data["reason"]
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, f"Request #{access_request.pk} from {access_request.organization} rejected.")
            return redirect("access_request_list")
    if access_request.status != AccessRequest.Status.PENDING:
        messages.error(request, " ".join(form.non_field_errors()))  # type: ignore[arg-type]  # messages are str
        return redirect("access_request_list")
    return access_request_list(request, reject_forms={access_request.pk: form})


# --- Obligations ----------------------------------------------------------------------------------------

OBLIGATIONS_PER_PAGE = 50


def _finding_create_url(obligation: Obligation | None = None) -> str:
    """Where a partner submits a finding (the research app's form), set to fulfil `obligation` if given."""
    try:
        path = reverse("finding_create")
    except NoReverseMatch:  # the research app's pages are not installed
        path = "/findings/new/"
    return f"{path}?{urlencode({'obligation': obligation.pk})}" if obligation else path


@login_required
def obligation_list(request: HttpRequest) -> HttpResponse:
    """Partners: their organisation's obligations, and a banner while one pauses access. Lab staff: every
    partner's, filtered by organisation, kind and state. Grouped by state, what needs doing first."""
    user = request_user(request)
    role = role_of(user)
    filters = selectors.ObligationFilter(
        request.GET or None, queryset=selectors.obligation_list(user=user, by_state=True), request=request
    )
    form = filters.form
    is_partner = role in PARTNER_ROLES
    if is_partner:
        del form.fields["organization"]  # partners only ever see their own
    obligations = filters.qs.none() if form.errors else filters.qs
    page = Paginator(obligations, OBLIGATIONS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    paused_by = selectors.overdue_obligation(organization=user.membership.organization) if is_partner else None
    context = {
        "form": form,
        "page": page,
        "query": query.urlencode(),
        "is_partner": is_partner,
        "filtered": bool(filters.is_bound and any(form.data.get(name) for name in form.fields)),
        "paused_by": paused_by,
        "fulfil_url": _finding_create_url(paused_by) if paused_by else None,
        "new_finding_url": _finding_create_url(),
    }
    return render(request, "agreements/obligation_list.html", context, status=400 if form.errors else 200)


def _render_obligation(
    request: HttpRequest, obligation: Obligation, *, extend_form: ObligationExtendForm | None = None, status: int = 200
) -> HttpResponse:
    role = role_of(request.user)
    can_extend = role in selectors.OBLIGATION_MANAGERS and obligation.is_open
    now = timezone.now()
    context = {
        "obligation": obligation,
        "state": obligation.state(now),
        "timeline": selectors.obligation_timeline(obligation),
        "is_partner": role in PARTNER_ROLES,
        "is_lab": role in LAB_ROLES,
        "can_extend": can_extend,
        "extend_form": extend_form or (ObligationExtendForm() if can_extend else None),
        "fulfil_url": _finding_create_url(obligation)
        if role in PARTNER_ROLES and obligation.is_open and obligation.pauses_access
        else None,
        "reminder_days": settings.OBLIGATION_REMINDER_DAYS,
        "now": now,
    }
    return render(request, "agreements/obligation_detail.html", context, status=status)


@login_required
def obligation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    obligation = selectors.obligation_get(user=request_user(request), pk=pk)
    return _render_obligation(request, obligation)


@login_required
@require_POST
def obligation_extend(request: HttpRequest, pk: int) -> HttpResponse:
    """Legal or a lab admin moves the due date later with a reason; auditors and partners are refused (403)."""
    obligation = selectors.obligation_get(user=request_user(request), pk=pk)
    require_role(request.user, *selectors.OBLIGATION_MANAGERS)
    form = ObligationExtendForm(request.POST)
    if form.is_valid():
        try:
            obligation = services.obligation_extend(
                actor=request_user(request),
                obligation=obligation,
                due_on=form.cleaned_data["due_on"],
                reason=form.cleaned_data["reason"],
            )
        except ValidationError as exc:
            if not hasattr(exc, "error_dict"):  # fulfilled or waived meanwhile: nothing left to extend
                messages.error(request, _error_text(exc))
                return redirect("obligation_detail", pk=obligation.pk)
            apply_validation_error(form, exc)
        else:
            messages.success(
                request,
                f"{obligation.reference} extended to {obligation.due_at:%Y-%m-%d}. "
                f"{obligation.organization.name} has been told why.",
            )
            return redirect("obligation_detail", pk=obligation.pk)
    return _render_obligation(request, obligation, extend_form=form, status=400)
