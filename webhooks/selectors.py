"""Reads for webhooks, scoped at one point: partner admins see their organisation's endpoints, lab
admins every endpoint; anyone else is refused (403), and another organisation's endpoint is not found."""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from accounts.models import Organization, Role, User
from accounts.permissions import require_role, role_of
from webhooks.models import Delivery, WebhookEndpoint

WEBHOOK_MANAGERS = (Role.LAB_ADMIN, Role.PARTNER_ADMIN)


def endpoint_list(*, user: User) -> QuerySet[WebhookEndpoint]:
    require_role(user, *WEBHOOK_MANAGERS)
    endpoints = WebhookEndpoint.objects.select_related("organization", "owner_organization")
    if role_of(user) == Role.LAB_ADMIN:
        return endpoints
    return endpoints.filter(owner_organization_id=user.membership.organization_id)


def endpoint_get(*, user: User, pk: int) -> WebhookEndpoint:
    endpoint = endpoint_list(user=user).filter(pk=pk).first()
    if endpoint is None:
        raise Http404("No such webhook endpoint.")
    return endpoint


def delivery_list(*, user: User, endpoint: WebhookEndpoint) -> QuerySet[Delivery]:
    """The endpoint's delivery log, newest first (the endpoint comes from endpoint_get)."""
    return Delivery.objects.filter(endpoint__in=endpoint_list(user=user), endpoint=endpoint).select_related("event")


def delivery_get(*, user: User, pk: int) -> Delivery:
    delivery = (
        Delivery.objects.filter(endpoint__in=endpoint_list(user=user), pk=pk)
        .select_related("event", "endpoint")
        .first()
    )
    if delivery is None:
        raise Http404("No such delivery.")
    return delivery


def endpoint_organization_choices(*, user: User) -> QuerySet[Organization]:
    """The organisations a lab admin may point an endpoint at (partner admins: their own only)."""
    if role_of(user) == Role.LAB_ADMIN:
        return Organization.objects.filter(active=True).order_by("kind", "name")
    return Organization.objects.filter(pk=user.membership.organization_id)


def endpoint_admins(endpoint: WebhookEndpoint) -> QuerySet[User]:
    """Who is told when the endpoint fails: the admins of the organisation that manages it."""
    role = Role.LAB_ADMIN if endpoint.owner_organization.is_lab else Role.PARTNER_ADMIN
    return User.objects.filter(
        is_active=True, membership__organization_id=endpoint.owner_organization_id, membership__role=role
    )
