"""Pages for the checkpoint registry and access requests."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.models import PARTNER_ROLES, Role
from accounts.permissions import has_role, require_role, role_of
from accounts.views import apply_validation_error
from models_registry import selectors, services
from models_registry.forms import AccessRequestForm, CheckpointStatusForm, RejectForm
from models_registry.models import AccessRequest, Checkpoint

# --- Checkpoints --------------------------------------------------------------------------------


@login_required
def checkpoint_list(request: HttpRequest) -> HttpResponse:
    """Lab staff see the registry; partner users see what their organisation can use and request."""
    if role_of(request.user) in PARTNER_ROLES:
        rows = selectors.partner_checkpoint_overview(user=request.user)
        return render(request, "models_registry/checkpoint_partner_list.html", {"rows": rows})
    checkpoints = selectors.checkpoint_list(user=request.user)
    return render(request, "models_registry/checkpoint_list.html", {"checkpoints": checkpoints})


@login_required
def checkpoint_detail(request: HttpRequest, slug: str, status_form: CheckpointStatusForm | None = None) -> HttpResponse:
    checkpoint = selectors.checkpoint_get(user=request.user, slug=slug)
    grants = selectors.grant_list_for_checkpoint(user=request.user, checkpoint=checkpoint)
    context = {
        "checkpoint": checkpoint,
        "grants": Paginator(grants, 50).get_page(request.GET.get("page")),
        "can_manage": has_role(request.user, Role.LAB_ADMIN),
        "status_form": status_form or CheckpointStatusForm(),
        "now": timezone.now(),
    }
    status = 400 if status_form is not None and status_form.errors else 200
    return render(request, "models_registry/checkpoint_detail.html", context, status=status)


@login_required
@require_POST
def checkpoint_status(request: HttpRequest, slug: str) -> HttpResponse:
    """Embargo, restore or withdraw (the kill switch) a checkpoint."""
    checkpoint = selectors.checkpoint_get(user=request.user, slug=slug)
    require_role(request.user, Role.LAB_ADMIN)
    form = CheckpointStatusForm(request.POST)
    if form.is_valid():
        action, reason = form.cleaned_data["action"], form.cleaned_data["reason"]
        try:
            if action == "embargo":
                services.checkpoint_embargo(actor=request.user, checkpoint=checkpoint, reason=reason)
                messages.success(request, f"{checkpoint.slug} is embargoed. Partners cannot use it until restored.")
            elif action == "restore":
                services.checkpoint_restore(actor=request.user, checkpoint=checkpoint)
                messages.success(request, f"{checkpoint.slug} is available again.")
            else:
                services.checkpoint_withdraw(actor=request.user, checkpoint=checkpoint, reason=reason)
                done = "every grant of it is revoked and its queued jobs are cancelled"
                messages.success(request, f"{checkpoint.slug} is withdrawn: {done}.")
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            return redirect("checkpoint_detail", slug=checkpoint.slug)
    return checkpoint_detail(request, slug, status_form=form)


# --- Access requests ----------------------------------------------------------------------------


@login_required
def access_request_list(request: HttpRequest, reject_forms: dict[int, RejectForm] | None = None) -> HttpResponse:
    """Partners: their organisation's requests. Lab staff: the review queue, oldest first."""
    if role_of(request.user) in PARTNER_ROLES:
        requests = selectors.access_request_list(user=request.user)
        page = Paginator(requests, 50).get_page(request.GET.get("page"))
        return render(request, "models_registry/access_request_list.html", {"page": page})

    queue = list(selectors.access_request_review_queue(user=request.user))
    grants = selectors.organization_live_grants(organization_ids=sorted({r.organization_id for r in queue}))
    reject_forms = reject_forms or {}
    pending = [
        {"request": r, "grants": grants[r.organization_id], "reject_form": reject_forms.get(r.pk, RejectForm())}
        for r in queue
    ]
    decided = selectors.access_request_list(user=request.user).exclude(status=AccessRequest.Status.PENDING)
    context = {
        "pending": pending,
        "decided": Paginator(decided, 25).get_page(request.GET.get("page")),
        "can_review": has_role(request.user, *selectors.REQUEST_REVIEWERS),
    }
    status = 400 if any(form.errors for form in reject_forms.values()) else 200
    return render(request, "models_registry/access_request_review.html", context, status=status)


@login_required
def access_request_create(request: HttpRequest) -> HttpResponse:
    require_role(request.user, *PARTNER_ROLES)
    wanted = Checkpoint.objects.filter(slug__in=request.GET.getlist("checkpoint"))
    form = AccessRequestForm(request.POST or None, initial={"checkpoints": list(wanted)})
    if request.method == "POST" and form.is_valid():
        try:
            access_request = services.access_request_create(
                actor=request.user,
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
        "checkpoints": Checkpoint.objects.order_by("parameter_count"),
        "selected": {str(pk) for pk in form["checkpoints"].value() or []},
    }
    return render(request, "models_registry/access_request_form.html", context, status=400 if form.errors else 200)


@login_required
def access_request_detail(request: HttpRequest, pk: int) -> HttpResponse:
    access_request = selectors.access_request_get(user=request.user, pk=pk)
    context = {
        "access_request": access_request,
        "can_withdraw": role_of(request.user) in PARTNER_ROLES
        and access_request.status == AccessRequest.Status.PENDING,
        "can_review": has_role(request.user, *selectors.REQUEST_REVIEWERS)
        and access_request.status == AccessRequest.Status.PENDING,
    }
    return render(request, "models_registry/access_request_detail.html", context)


@login_required
@require_POST
def access_request_withdraw(request: HttpRequest, pk: int) -> HttpResponse:
    access_request = selectors.access_request_get(user=request.user, pk=pk)
    try:
        services.access_request_withdraw(actor=request.user, access_request=access_request)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Request #{access_request.pk} withdrawn.")
    return redirect("access_request_detail", pk=access_request.pk)


@login_required
@require_POST
def access_request_approve(request: HttpRequest, pk: int) -> HttpResponse:
    """Approve into a prefilled draft amendment, and open it for legal to finish and send."""
    access_request = selectors.access_request_get(user=request.user, pk=pk)
    try:
        access_request = services.access_request_approve(actor=request.user, access_request=access_request)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("access_request_list")
    amendment = access_request.amendment
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
    access_request = selectors.access_request_get(user=request.user, pk=pk)
    require_role(request.user, *selectors.REQUEST_REVIEWERS)
    form = RejectForm(request.POST)
    if form.is_valid():
        try:
            services.access_request_reject(
                actor=request.user, access_request=access_request, reason=form.cleaned_data["reason"]
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, f"Request #{access_request.pk} from {access_request.organization} rejected.")
            return redirect("access_request_list")
    if access_request.status != AccessRequest.Status.PENDING:
        messages.error(request, " ".join(form.non_field_errors()))
        return redirect("access_request_list")
    return access_request_list(request, reject_forms={access_request.pk: form})
