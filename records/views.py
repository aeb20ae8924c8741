from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import (
    PermissionDenied,
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
    ValidationError,
)
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from accounts.permissions import has_role, request_user, require_role, role_of
from accounts.views import apply_validation_error
from agreements.selectors import agreement_get
from audit.selectors import audit_chain_verify
from records import services
from records.forms import (
    UPLOAD_TOO_LARGE,
    AuditExportForm,
    AuditFilterForm,
    EvidenceBundleForm,
    RecordVerifyForm,
    upload_declared_too_large,
)
from records.models import SealedRecord
from records.selectors import (
    AUDIT_READERS,
    EXPORT_KINDS,
    RECORD_EXPORTERS,
    agreement_record_latest,
    agreement_records_pending,
    audit_event_list,
    audit_filters_described,
    record_file_bytes,
    sealed_record_get,
    sealed_record_list,
    stage_review_record_latest,
)
from records.selectors import record_verify as verify_file


@login_required
def audit_event_list_page(request: HttpRequest) -> HttpResponse:
    require_role(request.user, *AUDIT_READERS)
    form = AuditFilterForm(request.GET or None)
    filters = {}
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        filters = {
            "organization_id": data["organization"].pk if data["organization"] else None,
            "actor_email": data["actor"],
            "action": data["action"],
            "created_after": data["created_after"],
            "created_before": data["created_before"],
        }
    events = (
        audit_event_list(user=request_user(request), **filters)
        if not form.errors
        else audit_event_list(user=request_user(request)).none()
    )
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {"form": form, "page": page, "query": query.urlencode()}
    status = 400 if form.errors else 200
    return render(request, "records/audit_event_list.html", context, status=status)


@login_required
def audit_chain_verify_page(request: HttpRequest) -> HttpResponse:
    require_role(request.user, *AUDIT_READERS)
    return render(request, "records/audit_verify.html", {"report": audit_chain_verify()})


# --- Sealed records: exports, downloads, verification ---------------------------------------------


def _export_context(request: HttpRequest, **forms: object) -> dict[str, object]:
    records = sealed_record_list(user=request_user(request))
    return {
        "bundle_form": forms.get("bundle_form") or EvidenceBundleForm(),
        "export_form": forms.get("export_form") or AuditExportForm(),
        "exports": list(records.filter(kind__in=EXPORT_KINDS)[:20]),
        "agreement_records": list(records.filter(kind=SealedRecord.Kind.AGREEMENT_RECORD)[:50]),
        "stage_review_records": list(records.filter(kind=SealedRecord.Kind.STAGE_REVIEW_RECORD)[:50]),
        "unsealed": list(agreement_records_pending(user=request_user(request))[:20]),
    }


@login_required
def records_home(request: HttpRequest) -> HttpResponse:
    require_role(request.user, *RECORD_EXPORTERS)
    return render(request, "records/home.html", _export_context(request))


@login_required
@require_POST
def record_export_bundle(request: HttpRequest) -> HttpResponse:
    require_role(request.user, *RECORD_EXPORTERS)
    form = EvidenceBundleForm(request.POST)
    if form.is_valid():
        try:
            record = services.record_export_request(
                actor=request_user(request),
                kind=SealedRecord.Kind.EVIDENCE_BUNDLE,
                organization=form.cleaned_data["organization"],
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            return redirect("record_detail", pk=record.pk)
    return render(request, "records/home.html", _export_context(request, bundle_form=form), status=400)


@login_required
@require_POST
def record_export_audit_log(request: HttpRequest) -> HttpResponse:
    require_role(request.user, *RECORD_EXPORTERS)
    form = AuditExportForm(request.POST)
    if form.is_valid():
        kind = (
            SealedRecord.Kind.AUDIT_LOG_PDF if form.cleaned_data["format"] == "pdf" else SealedRecord.Kind.AUDIT_LOG_CSV
        )
        try:
            record = services.record_export_request(actor=request_user(request), kind=kind, filters=form.cleaned_data)
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            return redirect("record_detail", pk=record.pk)
    return render(request, "records/home.html", _export_context(request, export_form=form), status=400)


@login_required
def record_detail(request: HttpRequest, pk: int) -> HttpResponse:
    record = sealed_record_get(user=request_user(request), pk=pk)
    context = {"record": record, "filters": audit_filters_described(record.filters)}
    return render(request, "records/detail.html", context)


@login_required
def record_status(request: HttpRequest, pk: int) -> HttpResponse:
    """The progress panel, polled by htmx until the record is ready or failed."""
    record = sealed_record_get(user=request_user(request), pk=pk)
    return render(request, "records/_status.html", {"record": record})


def _file_response(record: SealedRecord, content: bytes) -> HttpResponse:
    response = HttpResponse(content, content_type=record.content_type)
    response["Content-Disposition"] = f'attachment; filename="{record.filename}"'
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response


@login_required
def record_download(request: HttpRequest, pk: int) -> HttpResponse:
    record = sealed_record_get(user=request_user(request), pk=pk)
    content = record_file_bytes(record)
    services.record_download(actor=request_user(request), record=record)
    return _file_response(record, content)


@login_required
def agreement_record_download(request: HttpRequest, pk: int) -> HttpResponse:
    """An agreement's newest sealed record; partners reach only their own organisation's."""
    agreement, record = agreement_record_latest(user=request_user(request), agreement_pk=pk)
    if record is None:
        context = {"agreement": agreement, "can_seal": has_role(request.user, *RECORD_EXPORTERS)}
        return render(request, "records/agreement_missing.html", context, status=404)
    content = record_file_bytes(record)
    services.record_download(actor=request_user(request), record=record)
    return _file_response(record, content)


@login_required
@require_POST
def agreement_record_seal(request: HttpRequest, pk: int) -> HttpResponse:
    """Seal the record of an agreement activated before records existed (or whose sealing failed)."""
    agreement = agreement_get(user=request_user(request), pk=pk)
    try:
        queued = services.agreement_record_request(actor=request_user(request), agreement=agreement)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Sealing {agreement.reference}'s record ({', '.join(queued)}). Refresh in a moment.")
    return redirect("records_home")


@login_required
def stage_review_record_download(request: HttpRequest, pk: int) -> HttpResponse:
    """A release decision's sealed stage review record (lab staff; partners 404, as on the stage review)."""
    decision, record = stage_review_record_latest(user=request_user(request), decision_pk=pk)
    if record is None:
        context = {"decision": decision, "can_seal": has_role(request.user, *RECORD_EXPORTERS)}
        return render(request, "records/stage_review_missing.html", context, status=404)
    content = record_file_bytes(record)
    services.record_download(actor=request_user(request), record=record)
    return _file_response(record, content)


@login_required
@require_POST
def stage_review_record_seal(request: HttpRequest, pk: int) -> HttpResponse:
    """Seal a decision's record again when its sealing failed (or never ran)."""
    decision, _ = stage_review_record_latest(user=request_user(request), decision_pk=pk)
    try:
        services.stage_review_record_request(actor=request_user(request), decision=decision)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Sealing {decision.reference}'s record. Refresh in a moment.")
    return redirect("records_home")


# CSRF is checked in _record_verify_checked, after a body too large to hold a record is refused: the
# check reads the form, and so the whole upload, first. Refusing touches nothing, so it is safe
# unchecked.
@csrf_exempt
@login_required
def record_verify(request: HttpRequest) -> HttpResponse:
    """Any signed-in user: upload a PDF, learn whether it is an untouched sealed record of ours."""
    if role_of(request.user) is None:
        raise PermissionDenied("Your account has no role yet.")
    if request.method == "POST":
        if upload_declared_too_large(request):
            return _verify_page(request, RecordVerifyForm.refused(UPLOAD_TOO_LARGE), status=413)
        try:
            request.POST  # noqa: B018  # parse here, where Django's refusals of the body can go next to the field
        except RequestDataTooBig:
            # Form fields other than files count against DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB): a PDF sent as text.
            message = "Send the PDF as a file upload (the form's file field), not as text over 2.5 MB."
            return _verify_page(request, RecordVerifyForm.refused(message), status=413)
        except (TooManyFieldsSent, TooManyFilesSent, MultiPartParserError):
            message = "The upload could not be read; choose one PDF file and send the form again."
            return _verify_page(request, RecordVerifyForm.refused(message), status=400)
    return _record_verify_checked(request)


@csrf_protect
def _record_verify_checked(request: HttpRequest) -> HttpResponse:
    result = None
    status = 200
    form = RecordVerifyForm(request.POST, request.FILES) if request.method == "POST" else RecordVerifyForm()
    if request.method == "POST":
        if form.is_valid():
            result = verify_file(form.cleaned_data["file"].read())
        else:
            status = 400
    return _verify_page(request, form, result=result, status=status)


def _verify_page(request: HttpRequest, form: RecordVerifyForm, *, result: object = None, status: int) -> HttpResponse:
    return render(request, "records/verify.html", {"form": form, "result": result}, status=status)
