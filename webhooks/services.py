"""Writes for webhooks: registering endpoints, rotating secrets, resending; and the worker's side,
claiming a delivery, sending it and recording what came back."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from cryptography.fernet import InvalidToken
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone

from accounts.models import NotificationKind, Organization, Role, User
from accounts.permissions import require_role, role_of
from accounts.services import notifications_send
from audit import events as actions
from audit.services import audit_append
from core.tasks import task_send
from inference.services import BROKER_ERRORS
from webhooks import net, signing
from webhooks.models import EVENT_NAMES, Delivery, WebhookEndpoint
from webhooks.schedule import backoff, disable_after, retry_window
from webhooks.selectors import WEBHOOK_MANAGERS, endpoint_admins

logger = logging.getLogger(__name__)

MAX_ENDPOINTS_PER_ORGANIZATION = 20
SECRET_OVERLAP = timedelta(hours=24)
# A claimed delivery not recorded by then is taken back by the sweep (its worker died).
CLAIM_SECONDS = 120


def delivery_enqueue(delivery_id: int) -> None:
    """Send the delivery task once the transaction commits. A broker that is down fails nothing: the
    delivery row is committed, and the beat sweep sends it when it is due."""
    transaction.on_commit(lambda: _send(delivery_id))


def _send(delivery_id: int) -> None:
    try:
        task_send("webhooks.tasks.deliver", delivery_id, queue="default")
    except BROKER_ERRORS as exc:
        logger.warning(
            "Webhook delivery #%s is saved but could not be queued (%s); the sweep sends it.",
            delivery_id, type(exc).__name__,
        )  # fmt: skip


# --- Validation ----------------------------------------------------------------------------------


def url_clean(url: str) -> str:
    """A URL a receiver can be sent to, or ValidationError saying what to change."""
    url = (url or "").strip()
    if not url:
        raise ValidationError({"url": "Give the receiver's URL."})
    if len(url) > 500:
        raise ValidationError({"url": "Keep the URL under 500 characters."})
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError for a port that is not a number
    except ValueError:
        raise ValidationError({"url": "This is not a valid URL."}) from None
    schemes = {"https"} if not settings.DEBUG else {"https", "http"}
    if parts.scheme not in schemes:
        raise ValidationError({"url": "Use an https:// URL: webhooks carry signed agreement data."})
    if not parts.hostname:
        raise ValidationError({"url": "The URL needs a host name."})
    if parts.username or parts.password:
        raise ValidationError({"url": "Leave credentials out of the URL; receivers verify the signature instead."})
    if parts.fragment:
        raise ValidationError({"url": "Leave the #fragment out of the URL."})
    try:
        net.checked_addresses(url)
    except net.TargetRefused as exc:
        raise ValidationError({"url": str(exc)}) from None
    return url


def events_clean(names: list[str]) -> list[str]:
    if not isinstance(names, list) or not names:
        raise ValidationError({"events": "Choose at least one event."})
    unknown = sorted({str(name) for name in names} - set(EVENT_NAMES))
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        known = ", ".join(EVENT_NAMES)
        raise ValidationError({"events": f"Unknown event{plural}: {', '.join(unknown)}. Known: {known}."})
    return [name for name in EVENT_NAMES if name in set(names)]  # the catalogue's order, no repeats


# --- Endpoints -----------------------------------------------------------------------------------


@transaction.atomic
def endpoint_create(
    *,
    actor: User,
    url: str,
    events: list[str],
    description: str = "",
    organization: Organization | None = None,
) -> tuple[WebhookEndpoint, str]:
    """Register a receiver; returns it with its signing secret, which is shown this once."""
    require_role(actor, *WEBHOOK_MANAGERS)
    own = actor.membership.organization
    if role_of(actor) == Role.PARTNER_ADMIN:
        if organization is not None and organization.pk != own.pk:
            raise PermissionDenied("Partner admins register endpoints for their own organisation only.")
        organization = own
    errors: dict[str, list[str]] = {}
    for clean in (lambda: url_clean(url), lambda: events_clean(events)):
        try:
            clean()
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                errors.setdefault(field, []).extend(messages)
    description = (description or "").strip()
    if len(description) > 200:
        errors.setdefault("description", []).append("Keep the description under 200 characters.")
    if errors:
        raise ValidationError(errors)
    if WebhookEndpoint.objects.filter(owner_organization=own).count() >= MAX_ENDPOINTS_PER_ORGANIZATION:
        raise ValidationError(f"An organisation may register at most {MAX_ENDPOINTS_PER_ORGANIZATION} endpoints.")
    secret = signing.secret_generate()
    endpoint = WebhookEndpoint.objects.create(
        organization=organization,
        owner_organization=own,
        url=url.strip(),
        events=events_clean(events),
        description=description,
        secret_encrypted=signing.secret_encrypt(secret),
        created_by=actor,
    )
    audit_append(
        actor=actor,
        action=actions.WEBHOOK_ENDPOINT_CREATED,
        target=endpoint,
        organization=organization or own,
        data={"url": endpoint.url, "events": endpoint.events, "scope": organization.name if organization else "all"},
    )
    return endpoint, secret


@transaction.atomic
def endpoint_rotate_secret(*, actor: User, endpoint: WebhookEndpoint) -> tuple[WebhookEndpoint, str]:
    """A new secret, shown once; the old one stays valid (both signatures are sent) for 24 hours."""
    require_role(actor, *WEBHOOK_MANAGERS)
    endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
    secret = signing.secret_generate()
    endpoint.previous_secret_encrypted = endpoint.secret_encrypted
    endpoint.previous_secret_expires_at = timezone.now() + SECRET_OVERLAP
    endpoint.secret_encrypted = signing.secret_encrypt(secret)
    endpoint.save(update_fields=["secret_encrypted", "previous_secret_encrypted", "previous_secret_expires_at"])
    audit_append(
        actor=actor,
        action=actions.WEBHOOK_SECRET_ROTATED,
        target=endpoint,
        organization=endpoint.organization or endpoint.owner_organization,
        data={"previous_valid_until": endpoint.previous_secret_expires_at},
    )
    return endpoint, secret


@transaction.atomic
def endpoint_enable(*, actor: User, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """Turn a disabled endpoint back on: what it missed is sent again, each with 24 hours of retries."""
    require_role(actor, *WEBHOOK_MANAGERS)
    endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
    if endpoint.status != WebhookEndpoint.Status.DISABLED:
        return endpoint
    endpoint.status = WebhookEndpoint.Status.ACTIVE
    endpoint.failing_since = None
    endpoint.disabled_at = None
    endpoint.save(update_fields=["status", "failing_since", "disabled_at"])
    now = timezone.now()
    waiting = list(endpoint.deliveries.filter(status=Delivery.Status.PENDING).values_list("pk", flat=True))
    Delivery.objects.filter(pk__in=waiting).update(next_attempt_at=now, retry_until=now + retry_window())
    audit_append(
        actor=actor,
        action=actions.WEBHOOK_ENDPOINT_ENABLED,
        target=endpoint,
        organization=endpoint.organization or endpoint.owner_organization,
        data={"resumed_deliveries": len(waiting)},
    )
    for pk in waiting:
        delivery_enqueue(pk)
    return endpoint


@transaction.atomic
def delivery_resend(*, actor: User, delivery: Delivery) -> Delivery:
    """Send the event again, with the same webhook-id (receivers that have it already skip it)."""
    require_role(actor, *WEBHOOK_MANAGERS)
    delivery = Delivery.objects.select_for_update().select_related("endpoint", "event").get(pk=delivery.pk)
    if delivery.endpoint.status == WebhookEndpoint.Status.DISABLED:
        raise ValidationError("The endpoint is disabled: enable it first, and what it missed is sent again.")
    if delivery.status == Delivery.Status.SENDING:
        raise ValidationError("This delivery is being sent right now; wait for its result.")
    now = timezone.now()
    delivery.status = Delivery.Status.PENDING
    delivery.next_attempt_at = now
    delivery.retry_until = now + retry_window()
    delivery.claimed_until = None
    delivery.save(update_fields=["status", "next_attempt_at", "retry_until", "claimed_until"])
    audit_append(
        actor=actor,
        action=actions.WEBHOOK_DELIVERY_RESENT,
        target=delivery.endpoint,
        organization=delivery.endpoint.organization or delivery.endpoint.owner_organization,
        data={"delivery": delivery.pk, "event": delivery.event.message_id, "type": delivery.event.type},
    )
    delivery_enqueue(delivery.pk)
    return delivery


# --- Delivering (the worker) ---------------------------------------------------------------------


def _due() -> models.Q:
    """Deliveries a worker may take now: pending and due, or claimed by a worker that never reported back."""
    now = timezone.now()
    return models.Q(status=Delivery.Status.PENDING, next_attempt_at__lte=now) | models.Q(
        status=Delivery.Status.SENDING, claimed_until__lt=now
    )


def delivery_claim(*, delivery_id: int) -> bool:
    """Claim with a conditional UPDATE: a redelivered task, or a second worker, finds it taken."""
    now = timezone.now()
    claimed = (
        Delivery.objects.filter(_due(), pk=delivery_id)
        .exclude(endpoint__status=WebhookEndpoint.Status.DISABLED)
        .update(status=Delivery.Status.SENDING, claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
    )
    return bool(claimed)


def secrets_in_force(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    secrets = [signing.secret_decrypt(endpoint.secret_encrypted)]
    if (
        endpoint.previous_secret_encrypted
        and endpoint.previous_secret_expires_at
        and endpoint.previous_secret_expires_at > now
    ):
        secrets.append(signing.secret_decrypt(endpoint.previous_secret_encrypted))
    return secrets


def delivery_attempt(*, delivery_id: int) -> str:
    """Claim, send once and record the outcome: "delivered", "retry", "gave_up" or "skipped"."""
    if not delivery_claim(delivery_id=delivery_id):
        return "skipped"
    delivery = Delivery.objects.select_related("event", "endpoint").get(pk=delivery_id)
    body = json.dumps(delivery.event.payload, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        secrets = secrets_in_force(delivery.endpoint, timezone.now())
    except InvalidToken:
        # Encrypted under another SECRET_KEY (it changed, or this host's differs): nothing can be signed.
        # Recorded as a failed attempt, so the endpoint turns failing and its admins are told to rotate it.
        unreadable = "The endpoint's signing secret cannot be read with this server's SECRET_KEY; rotate the secret."
        return delivery_record(delivery_id=delivery_id, response=net.Response(None, 0, "", unreadable))
    headers = signing.signed_headers(secrets, delivery.event.message_id, int(time.time()), body)
    # Outside any transaction: the receiver may take seconds, and no row is locked meanwhile.
    response = net.post(delivery.endpoint.url, body=body, headers=headers)
    return delivery_record(delivery_id=delivery_id, response=response)


@transaction.atomic
def delivery_record(*, delivery_id: int, response: net.Response) -> str:
    """Store an attempt's outcome; on failure schedule the next one, or give up after 24 hours."""
    delivery = Delivery.objects.select_for_update().select_related("endpoint").get(pk=delivery_id)
    now = timezone.now()
    delivery.attempts += 1
    delivery.last_attempt_at = now
    delivery.last_status_code = response.status_code
    delivery.last_latency_ms = response.latency_ms
    delivery.last_error = response.error[:300]
    delivery.response_excerpt = response.excerpt
    delivery.claimed_until = None
    endpoint = WebhookEndpoint.objects.select_for_update().get(pk=delivery.endpoint_id)
    if response.ok:
        delivery.status = Delivery.Status.SUCCEEDED
        delivery.delivered_at = now
        outcome = "delivered"
        if endpoint.status == WebhookEndpoint.Status.FAILING:
            endpoint.status = WebhookEndpoint.Status.ACTIVE
            endpoint.failing_since = None
            endpoint.save(update_fields=["status", "failing_since"])
    elif now + backoff(delivery.attempts) <= delivery.retry_until:
        delivery.status = Delivery.Status.PENDING
        delivery.next_attempt_at = now + backoff(delivery.attempts)
        outcome = "retry"
    else:
        delivery.status = Delivery.Status.FAILED
        outcome = "gave_up"
        _endpoint_failed(endpoint, now)
    delivery.save()
    return outcome


def _endpoint_failed(endpoint: WebhookEndpoint, now: datetime) -> None:
    """A delivery gave up: the endpoint is failing (its admins are told); failing for 5 days, disabled."""
    if endpoint.status == WebhookEndpoint.Status.ACTIVE:
        endpoint.status = WebhookEndpoint.Status.FAILING
        endpoint.failing_since = now
        endpoint.save(update_fields=["status", "failing_since"])
        audit_append(
            actor=None,
            action=actions.WEBHOOK_ENDPOINT_FAILING,
            target=endpoint,
            organization=endpoint.organization or endpoint.owner_organization,
            data={"url": endpoint.url},
        )
        _tell_admins(endpoint, "failing")
    _disable_if_failing_too_long(endpoint, now)


def _disable_if_failing_too_long(endpoint: WebhookEndpoint, now: datetime) -> bool:
    if endpoint.status != WebhookEndpoint.Status.FAILING or endpoint.failing_since is None:
        return False
    if now - endpoint.failing_since < disable_after():
        return False
    endpoint.status = WebhookEndpoint.Status.DISABLED
    endpoint.disabled_at = now
    endpoint.save(update_fields=["status", "disabled_at"])
    audit_append(
        actor=None,
        action=actions.WEBHOOK_ENDPOINT_DISABLED,
        target=endpoint,
        organization=endpoint.organization or endpoint.owner_organization,
        data={"failing_since": endpoint.failing_since},
    )
    _tell_admins(endpoint, "disabled")
    return True


def _tell_admins(endpoint: WebhookEndpoint, what: str) -> None:
    days = settings.WEBHOOKS_DISABLE_AFTER_DAYS
    if what == "failing":
        title = f"Webhook endpoint {endpoint.url} is failing"
        body = (
            f"Deliveries to {endpoint.url} have failed for {settings.WEBHOOKS_RETRY_HOURS} hours. New events are still "
            f"tried; if none succeeds for {days} days the endpoint is disabled. See the delivery log for the answers."
        )
    else:
        title = f"Webhook endpoint {endpoint.url} is disabled"
        body = (
            f"Nothing could be delivered to {endpoint.url} for {days} days, so it is disabled. Events are kept: "
            "enable it again on its page once the receiver is fixed, and what it missed is sent."
        )
    notifications_send(
        users=endpoint_admins(endpoint),
        kind=NotificationKind.WEBHOOK_FAILING,
        title=title,
        body=body,
        url=reverse("webhook_detail", args=[endpoint.pk]),
        dedupe_key=f"webhook.{what}:{endpoint.pk}:{(endpoint.failing_since or timezone.now()).isoformat()}",
    )


def deliveries_sweep(*, limit: int = 500) -> dict[str, int]:
    """The beat's pass: send what is due (retries, and what a broker outage kept back); disable
    endpoints that have failed for 5 days."""
    now = timezone.now()
    due = list(
        Delivery.objects.filter(_due())
        .exclude(endpoint__status=WebhookEndpoint.Status.DISABLED)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    for pk in due:
        delivery_enqueue(pk)  # outside a transaction: sent at once
    disabled = 0
    for endpoint_id in WebhookEndpoint.objects.filter(
        status=WebhookEndpoint.Status.FAILING, failing_since__lte=now - disable_after()
    ).values_list("pk", flat=True):
        with transaction.atomic():
            endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint_id)
            disabled += _disable_if_failing_too_long(endpoint, now)
    return {"queued": len(due), "disabled": disabled}
