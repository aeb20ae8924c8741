"""Pages for generation jobs: the form, the list, one job with its live progress, and cancelling."""

from __future__ import annotations

import math
import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render, resolve_url
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from accounts.models import LAB_ROLES, PARTNER_ROLES, Role
from accounts.permissions import request_user, require_role, role_of
from accounts.views import apply_validation_error
from agreements.selectors import AccessRefused
from agreements.views import checkpoint_detail
from core.api import anonymous_ident, rate_limit_hit
from inference import provenance, selectors, services
from inference.forms import JobForm, ProvenanceCheckForm
from inference.models import GenerationJob
from inference.services import IdempotencyConflict
from inference.signal import job_wait_finished
from models_registry import selectors as registry_selectors
from models_registry import services as registry_services
from models_registry.forms import CheckpointStatusForm

JOBS_PER_PAGE = 25
# The job page long-polls its live part: each request returns at once when the job finishes, else after
# this many seconds with the progress so far (the worker writes progress every half second or so).
LIVE_WAIT_S = 2


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    """Partners: their organisation's jobs. Lab staff: every organisation's, read-only."""
    filters = selectors.JobFilter(request.GET or None, queryset=selectors.job_list(user=request_user(request)))
    form = filters.form
    jobs = filters.qs.none() if form.errors else filters.qs
    page = Paginator(jobs, JOBS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "query": query.urlencode(),
        "is_lab": role_of(request.user) in LAB_ROLES,
        "can_submit": selectors.job_submit_offered(user=request_user(request)),
        "filtered": bool(filters.is_bound and any(form.data.get(name) for name in form.fields)),
    }
    return render(request, "inference/job_list.html", context, status=400 if form.errors else 200)


@login_required
def job_create(request: HttpRequest) -> HttpResponse:
    """The choke point decides: the form offers what is usable now, and a refusal says what is missing."""
    require_role(request.user, *PARTNER_ROLES)
    options = selectors.job_checkpoint_options(user=request_user(request))
    form = JobForm(request.POST or None, initial=_initial(request), usable=options.usable)
    refusal = None
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            job = services.job_submit(
                actor=request_user(request),
                checkpoint=form.cleaned_data["checkpoint"],
                params=form.params(),
                idempotency_key=form.cleaned_data["idempotency_key"],
            )
        except AccessRefused as refused:
            refusal = refused.decision
            status = 429 if refusal.code == "quota_exceeded" else 403
        except IdempotencyConflict as conflict:
            # The page was submitted before with other settings (back button, edit, submit): a new key.
            data = request.POST.copy()
            data["idempotency_key"] = uuid.uuid4().hex
            form = JobForm(data, usable=options.usable)
            form.is_valid()
            form.add_error(
                None, f"This form was already sent as job #{conflict.job.pk}. Submit again to queue a new job."
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            if selectors.job_dispatch_delayed(job):
                messages.warning(
                    request,
                    f"Job #{job.pk} is saved and queued on {job.checkpoint.slug}, but the workers' queue cannot be "
                    "reached just now; it starts once the queue is back, within minutes. No need to submit it again.",
                )
            else:
                messages.success(request, f"Job #{job.pk} queued on {job.checkpoint.slug}.")
            return redirect("job_detail", pk=job.pk)
    if form.errors:
        status = 400
    context = {"form": form, "options": options, "refusal": refusal}
    return render(request, "inference/job_form.html", context, status=status)


def _initial(request: HttpRequest) -> dict[str, object]:
    """?from=<job> runs a job again with its settings; ?checkpoint=<slug> preselects a checkpoint."""
    source = request.GET.get("from", "")
    if source.isdigit():
        return JobForm.initial_from(selectors.job_get(user=request_user(request), pk=int(source)))
    if request.GET.get("checkpoint"):
        return {"checkpoint": request.GET["checkpoint"]}
    return {}


@login_required
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = selectors.job_get(user=request_user(request), pk=pk, with_samples=True)
    return render(request, "inference/job_detail.html", _job_context(request, job))


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails  # set by django_htmx's middleware


def job_live(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """The part of the job page that changes, long-polled (`?wait=`) until the job finishes."""
    if not request.user.is_authenticated:
        # Signed out while watching (the session expired): a login redirect would be swapped into the
        # page, so ask htmx to load the sign-in page instead, coming back here afterwards.
        login = f"{resolve_url(settings.LOGIN_URL)}?next={reverse('job_detail', args=[pk])}"
        return HttpResponseClientRedirect(login) if request.htmx else redirect(login)
    job = selectors.job_get(user=request.user, pk=pk, with_samples=True)
    wait = _live_wait(request.GET.get("wait"))
    if wait and not job.is_finished and job_wait_finished(job.pk, wait):
        job = selectors.job_get(user=request.user, pk=pk, with_samples=True)
    return render(request, "inference/_job_live_response.html", _job_context(request, job))


def _live_wait(raw: str | None) -> float:
    """Seconds to hold the request for the job to finish: 0 to LIVE_WAIT_S; anything else is 0 (answer now)."""
    try:
        wait = float(raw or 0)
    except ValueError:
        return 0.0
    return wait if 0 < wait <= LIVE_WAIT_S else 0.0


def _job_context(request: HttpRequest, job: GenerationJob) -> dict[str, object]:
    generate_s = (job.timings or {}).get("generate_s")
    return {
        "job": job,
        "live_wait_s": LIVE_WAIT_S,
        "samples": selectors.job_samples(job) if job.is_finished else [],
        "queue_position": selectors.job_queue_position(job),
        "can_cancel": selectors.job_can_cancel(user=request_user(request), job=job),
        "tokens_per_s": job.tokens_generated / generate_s if generate_s and job.tokens_generated else None,
        "can_submit": selectors.job_submit_offered(user=request_user(request), checkpoint=job.checkpoint),
    }


@login_required
@require_POST
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = selectors.job_get(user=request_user(request), pk=pk)
    try:
        job = services.job_cancel(actor=request_user(request), job=job)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        if job.status == GenerationJob.Status.CANCELLED:
            messages.success(request, f"Job #{job.pk} cancelled before it started.")
        else:
            messages.success(request, f"Stopping job #{job.pk}: it keeps the tokens generated so far.")
    return redirect("job_detail", pk=job.pk)


@login_required
@require_POST
def checkpoint_status(request: HttpRequest, slug: str) -> HttpResponse:
    """Embargo, restore or withdraw (the kill switch, which also cancels jobs: hence here) a checkpoint."""
    checkpoint = registry_selectors.checkpoint_get(user=request_user(request), slug=slug)
    require_role(request.user, Role.LAB_ADMIN)
    form = CheckpointStatusForm(request.POST)
    if form.is_valid():
        action, reason = form.cleaned_data["action"], form.cleaned_data["reason"]
        try:
            if action == "embargo":
                registry_services.checkpoint_embargo(actor=request_user(request), checkpoint=checkpoint, reason=reason)
                messages.success(request, f"{checkpoint.slug} is embargoed. Partners cannot use it until restored.")
            elif action == "restore":
                registry_services.checkpoint_restore(actor=request_user(request), checkpoint=checkpoint)
                messages.success(request, f"{checkpoint.slug} is available again.")
            else:
                done = services.checkpoint_withdraw(actor=request_user(request), checkpoint=checkpoint, reason=reason)
                messages.success(
                    request,
                    f"{checkpoint.slug} is withdrawn: {_count(done.grants_revoked, 'grant')} revoked, "
                    f"{_count(done.jobs_cancelled, 'queued job')} cancelled, "
                    f"{_count(done.jobs_stopping, 'running job')} asked to stop.",
                )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            return redirect("checkpoint_detail", slug=checkpoint.slug)
    return checkpoint_detail(request, slug, status_form=form)


def _count(n: int, thing: str) -> str:
    return f"{n:,} {thing}{'' if n == 1 else 's'}"


def provenance_check(request: HttpRequest) -> HttpResponse:
    """Public: paste a text, learn whether it carries the watermark and which samples it matches.

    Anonymous visitors share the API's per-IP budget (30 checks a minute) and see what the API shows them.
    """
    form = ProvenanceCheckForm(request.POST or None)
    result = None
    status = 200
    if request.method == "POST":
        user = request_user(request) if request.user.is_authenticated else None
        if user is None:
            allowed, wait = rate_limit_hit(scope="provenance_anon", ident=anonymous_ident(request))
            if not allowed:
                response = render(
                    request, "inference/provenance.html", {"form": form, "retry_after": math.ceil(wait)}, status=429
                )
                response["Retry-After"] = str(math.ceil(wait))
                return response
        if form.is_valid():
            result = provenance.provenance_check(user=user, text=form.cleaned_data["text"])
        else:
            status = 400
    return render(request, "inference/provenance.html", {"form": form, "result": result}, status=status)
