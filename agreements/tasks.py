"""Emails about agreements, and the time-driven steps run by beat. Thin, idempotent, by id."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mass_mail
from django.template.loader import render_to_string
from django.urls import reverse

from accounts.models import Membership, Role
from accounts.selectors import lab_organization
from agreements import services
from agreements.models import Agreement

SUBJECTS = {
    "sent": "Please sign: model-sharing agreement {ref} with {lab}",
    "reminder": "Reminder: agreement {ref} is waiting for your signature",
    "activated": "Agreement {ref} is active: your access has started",
    "terminated": "Agreement {ref} was terminated",
    "voided": "Agreement {ref} was withdrawn",
    "countersign": "Ready to countersign: agreement {ref} signed by {org}",
    "declined": "Agreement {ref} was declined by {org}",
}


def _send(agreement, kind: str, recipients: list[str]) -> int:
    if not recipients:
        return 0
    lab = lab_organization()
    context = {
        "agreement": agreement,
        "kind": kind,
        "url": settings.SITE_URL + reverse("agreement_detail", args=[agreement.pk]),
        "lab_name": lab.legal_name if lab else "the Lab",
    }
    subject = SUBJECTS[kind].format(ref=agreement.reference, lab=context["lab_name"], org=agreement.organization.name)
    body = render_to_string("agreements/email/notice.txt", context)
    return send_mass_mail([(subject, body, None, [email]) for email in recipients])


@shared_task(autoretry_for=(ConnectionError, TimeoutError), retry_backoff=True, max_retries=5)
def notify_signatories(agreement_id: int, kind: str) -> int:
    """Email the partner's signatories (or, once active, everyone at the partner who manages access)."""
    agreement = Agreement.objects.select_related("organization").filter(pk=agreement_id).first()
    if agreement is None:
        return 0
    if kind == "reminder" and agreement.status != Agreement.Status.OUT_FOR_SIGNATURE:
        return 0  # signed or ended since the reminder was queued
    roles = [Role.SIGNATORY] if kind in ("sent", "reminder", "voided") else [Role.SIGNATORY, Role.PARTNER_ADMIN]
    recipients = list(
        agreement.organization.memberships.filter(role__in=roles, user__is_active=True).values_list(
            "user__email", flat=True
        )
    )
    return _send(agreement, kind, recipients)


def _lab_legal_emails() -> list[str]:
    return list(Membership.objects.filter(role=Role.LEGAL, user__is_active=True).values_list("user__email", flat=True))


@shared_task(autoretry_for=(ConnectionError, TimeoutError), retry_backoff=True, max_retries=5)
def notify_lab_countersign(agreement_id: int) -> int:
    agreement = Agreement.objects.select_related("organization").filter(pk=agreement_id).first()
    if agreement is None or agreement.status != Agreement.Status.PARTNER_SIGNED:
        return 0
    return _send(agreement, "countersign", _lab_legal_emails())


@shared_task(autoretry_for=(ConnectionError, TimeoutError), retry_backoff=True, max_retries=5)
def notify_lab_declined(agreement_id: int) -> int:
    agreement = Agreement.objects.select_related("organization").filter(pk=agreement_id).first()
    if agreement is None:
        return 0
    return _send(agreement, "declined", _lab_legal_emails())


@shared_task
def expire_agreements() -> list[str]:
    return services.agreements_expire_due()


@shared_task
def remind_signatories() -> list[str]:
    return services.agreements_remind_due()


@shared_task(ignore_result=True)
def revoke_expired_grants() -> int:
    """Hourly: revoke grants past their end. Idempotent: a revoked grant is not picked up again."""
    return services.grants_revoke_expired()
