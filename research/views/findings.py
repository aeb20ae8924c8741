"""Pages for findings: the list, the form (with PDF attachments), one finding with the lab's review forms,
the partner's revision, and attachment downloads."""

from __future__ import annotations

from typing import Any, TypeVar

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.forms import Form
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.datastructures import MultiValueDict
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from accounts.models import LAB_ROLES, PARTNER_ROLES
from accounts.permissions import request_user, require_role, role_of
from accounts.views import apply_validation_error
from core.errors import DomainError
from research.forms.findings import FindingForm, FindingReviewForm, FindingReviseForm, PublicationReviewForm
from research.models import Finding
from research.selectors import findings as selectors
from research.services import findings as services

FINDINGS_PER_PAGE = 25
# A body declaring more than every attachment at its largest plus the form's text cannot be a valid finding:
# refused before it is read (and before the CSRF check, which reads the whole form).
UPLOAD_ENVELOPE = 1024 * 1024
UPLOAD_TOO_LARGE = f"The upload is too large: attach at most {services.MAX_ATTACHMENTS} PDFs of at most 20 MB each."


def _declared_too_large(request: HttpRequest) -> bool:
    declared = request.META.get("CONTENT_LENGTH") or "0"
    limit = services.MAX_ATTACHMENTS * settings.FINDING_ATTACHMENT_MAX_BYTES + UPLOAD_ENVELOPE
    return declared.isdigit() and int(declared) > limit


FormT = TypeVar("FormT", bound=Form)


def _refused_unread(form: FormT) -> FormT:
    """The form shown again for an upload refused without reading it: the reason next to the attachments."""
    form.full_clean()  # bound and empty: its errors are ours to set
    form.errors.clear()
    form.add_error("attachments", UPLOAD_TOO_LARGE)
    return form


@login_required
def finding_list(request: HttpRequest) -> HttpResponse:
    """Partners: their organisation's findings. Lab staff: every partner's, to review."""
    user = request_user(request)
    filters = selectors.FindingFilter(request.GET or None, queryset=selectors.finding_list(user=user))
    form = filters.form
    is_lab = role_of(user) in LAB_ROLES
    if not is_lab:
        del form.fields["organization"]  # partners see only their own
    findings = filters.qs.none() if form.errors else filters.qs
    page = Paginator(findings, FINDINGS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "query": query.urlencode(),
        "is_lab": is_lab,
        "can_submit": role_of(user) in PARTNER_ROLES,
        "awaiting_count": selectors.findings_awaiting_review(user=user).count() if is_lab else 0,
        "filtered": bool(filters.is_bound and any(form.data.get(name) for name in form.fields)),
    }
    return render(request, "research/finding_list.html", context, status=400 if form.errors else 200)


@csrf_exempt  # checked in _finding_create_checked, once a body too large to be a finding is refused unread
@login_required
def finding_create(request: HttpRequest) -> HttpResponse:
    require_role(request.user, *PARTNER_ROLES)
    options = selectors.finding_form_options(user=request_user(request))
    if request.method == "POST" and _declared_too_large(request):
        form = _refused_unread(FindingForm(data={}, files=MultiValueDict(), options=options))
        return _form_page(request, form, options, status=413)
    return _finding_create_checked(request, options)


@csrf_protect
def _finding_create_checked(request: HttpRequest, options: selectors.FindingFormOptions) -> HttpResponse:
    if request.method != "POST":
        initial = {}
        if request.GET.get("obligation", "").isdigit():
            initial["obligation"] = int(request.GET["obligation"])
        return _form_page(request, FindingForm(initial=initial, options=options))
    form = FindingForm(request.POST, request.FILES, options=options)
    if form.is_valid():
        data = form.cleaned_data
        try:
            finding = services.finding_submit(
                actor=request_user(request),
                title=data["title"],
                category=data["category"],
                checkpoints=list(data["checkpoints"]),
                summary=data["summary"],
                cited_job_ids=data["cited_jobs"],
                obligation=data["obligation"],
                publication_venue=data["publication_venue"],
                publication_date=data["publication_date"],
                attachments=data["attachments"],
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            done = f"{finding.reference} submitted; legal at the lab reviews it."
            if finding.obligation is not None:
                done += f" It fulfils {finding.obligation.reference}."
            if finding.publication_review:
                done += f" The lab answers your planned publication by {finding.publication_review_due_at:%Y-%m-%d}."
            messages.success(request, done)
            return redirect("finding_detail", pk=finding.pk)
    return _form_page(request, form, options, status=400)


def _form_page(
    request: HttpRequest, form: FindingForm, options: selectors.FindingFormOptions | None = None, status: int = 200
) -> HttpResponse:
    options = options or selectors.finding_form_options(user=request_user(request))
    selected_jobs = {str(value) for value in (form["cited_jobs"].value() or [])}
    context = {"form": form, "options": options, "selected_jobs": selected_jobs}
    return render(request, "research/finding_form.html", context, status=status)


@login_required
def finding_detail(request: HttpRequest, pk: int) -> HttpResponse:
    finding = selectors.finding_get(user=request_user(request), pk=pk)
    return _detail_page(request, finding)


def _detail_page(
    request: HttpRequest,
    finding: Finding,
    *,
    review_form: FindingReviewForm | None = None,
    publication_form: PublicationReviewForm | None = None,
    refusal: str = "",
    status: int = 200,
) -> HttpResponse:
    user = request_user(request)
    context: dict[str, Any] = {
        "finding": finding,
        "publication_obligation": selectors.finding_publication_obligation(finding),
        "can_review": selectors.finding_can_review(user=user, finding=finding),
        "can_answer_publication": selectors.finding_can_answer_publication(user=user, finding=finding),
        "can_revise": selectors.finding_can_revise(user=user, finding=finding),
        "review_form": review_form or FindingReviewForm(),
        "publication_form": publication_form or PublicationReviewForm(),
        "refusal": refusal,
        "is_lab": role_of(user) in LAB_ROLES,
    }
    return render(request, "research/finding_detail.html", context, status=status)


@login_required
@require_POST
def finding_review(request: HttpRequest, pk: int) -> HttpResponse:
    """Legal or a lab admin: acknowledge, request changes or accept (the button pressed says which)."""
    finding = selectors.finding_get(user=request_user(request), pk=pk)
    require_role(request.user, *services.FINDING_REVIEWERS)
    form = FindingReviewForm(request.POST)
    if form.is_valid():
        try:
            finding = services.finding_review(
                actor=request_user(request),
                finding=finding,
                action=form.cleaned_data["action"],
                comment=form.cleaned_data["comment"],
            )
        except DomainError as exc:
            return _detail_page(request, _fresh(request, pk), review_form=form, refusal=exc.message, status=exc.status)
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, f"{finding.reference} is {finding.get_status_display().lower()}.")
            return redirect("finding_detail", pk=finding.pk)
    return _detail_page(request, finding, review_form=form, status=400)


@login_required
@require_POST
def finding_publication_review(request: HttpRequest, pk: int) -> HttpResponse:
    """Legal or a lab admin answers a planned publication: no objection, or an objection with reasons."""
    finding = selectors.finding_get(user=request_user(request), pk=pk)
    require_role(request.user, *services.FINDING_REVIEWERS)
    form = PublicationReviewForm(request.POST)
    if form.is_valid():
        try:
            finding = services.finding_publication_review(
                actor=request_user(request),
                finding=finding,
                objection=form.cleaned_data["answer"] == "objection",
                reasons=form.cleaned_data["reasons"],
            )
        except DomainError as exc:
            return _detail_page(
                request, _fresh(request, pk), publication_form=form, refusal=exc.message, status=exc.status
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(
                request, f"{finding.reference}: {finding.get_publication_review_display().lower()} recorded."
            )
            return redirect("finding_detail", pk=finding.pk)
    return _detail_page(request, finding, publication_form=form, status=400)


def _fresh(request: HttpRequest, pk: int) -> Finding:
    # After a refusal the page shows the finding as it is now, not as this request first read it.
    return selectors.finding_get(user=request_user(request), pk=pk)


@csrf_exempt  # checked in _finding_revise_checked, once a body too large to be a finding is refused unread
@login_required
def finding_revise(request: HttpRequest, pk: int) -> HttpResponse:
    finding = selectors.finding_get(user=request_user(request), pk=pk)
    require_role(request.user, *PARTNER_ROLES)
    if not selectors.finding_can_revise(user=request_user(request), finding=finding):
        messages.error(
            request, f"{finding.reference} is {finding.get_status_display().lower()}; it is revised only when the "
            "lab asks for changes.",
        )  # fmt: skip
        return redirect("finding_detail", pk=finding.pk)
    if request.method == "POST" and _declared_too_large(request):
        form = _refused_unread(FindingReviseForm(data={}, files=MultiValueDict()))
        return _revise_page(request, finding, form, status=413)
    return _finding_revise_checked(request, finding)


@csrf_protect
def _finding_revise_checked(request: HttpRequest, finding: Finding) -> HttpResponse:
    if request.method != "POST":
        form = FindingReviseForm(initial={"title": finding.title, "summary": finding.summary})
        return _revise_page(request, finding, form)
    form = FindingReviseForm(request.POST, request.FILES)
    if form.is_valid():
        data = form.cleaned_data
        try:
            finding = services.finding_revise(
                actor=request_user(request),
                finding=finding,
                title=data["title"],
                summary=data["summary"],
                note=data["note"],
                attachments=data["attachments"],
            )
        except DomainError as exc:
            messages.error(request, exc.message)
            return redirect("finding_detail", pk=finding.pk)
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, f"{finding.reference} revised and submitted again.")
            return redirect("finding_detail", pk=finding.pk)
    return _revise_page(request, finding, form, status=400)


def _revise_page(request: HttpRequest, finding: Finding, form: FindingReviseForm, status: int = 200) -> HttpResponse:
    requested = [r for r in finding.reviews.all() if r.action == r.Action.CHANGES_REQUESTED]
    context = {"finding": finding, "form": form, "request_for_changes": requested[-1] if requested else None}
    return render(request, "research/finding_revise.html", context, status=status)


@login_required
def finding_attachment_download(request: HttpRequest, pk: int, attachment_pk: int) -> FileResponse:
    """The PDF as a download, never shown inline: a sandboxing policy and no type sniffing, whatever it holds."""
    attachment = selectors.finding_attachment_get(user=request_user(request), finding_pk=pk, pk=attachment_pk)
    path = services.attachment_path(attachment)
    try:
        handle = path.open("rb")
    except OSError:
        raise Http404("The attachment's file is not available.") from None
    services.finding_attachment_download(actor=request_user(request), attachment=attachment)
    response = FileResponse(handle, as_attachment=True, filename=attachment.filename, content_type="application/pdf")
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "sandbox; default-src 'none'"
    response["Cache-Control"] = "private, no-store"
    return response
