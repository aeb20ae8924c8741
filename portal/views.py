"""The page each persona lands on."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.permissions import request_user, role_of
from portal.selectors import home_context


@login_required
def home(request: HttpRequest) -> HttpResponse:
    role = role_of(request.user)
    if role is None:
        return render(request, "home/no_role.html", status=403)
    return render(request, f"home/{role}.html", home_context(request_user(request)))
