from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.permissions import require_role
from audit.forms import AuditFilterForm
from audit.selectors import AUDIT_READERS, audit_chain_verify, audit_event_list


@login_required
def audit_event_list_view(request: HttpRequest) -> HttpResponse:
    require_role(request.user, *AUDIT_READERS)
    form = AuditFilterForm(request.GET or None)
    filters = {}
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        filters = {
            "organization_id": data["organization"].pk if data["organization"] else None,
            "actor_email": data["actor"],
            "action": data["action"],
            "date_from": data["date_from"],
            "date_to": data["date_to"],
        }
    events = (
        audit_event_list(user=request.user, **filters)
        if not form.errors
        else audit_event_list(user=request.user).none()
    )
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {"form": form, "page": page, "query": query.urlencode()}
    status = 400 if form.errors else 200
    return render(request, "audit/event_list.html", context, status=status)


@login_required
def audit_verify_view(request: HttpRequest) -> HttpResponse:
    require_role(request.user, *AUDIT_READERS)
    return render(request, "audit/verify.html", {"report": audit_chain_verify()})
