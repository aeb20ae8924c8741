"""Emails about agreements, and the time-driven steps run by beat. Thin, idempotent, by id."""

from __future__ import annotations

from celery import shared_task
from django.template.loader import render_to_string
from django.urls import reverse

from accounts.models import NotificationKind, Role, User
from accounts.selectors import lab_organization
from accounts.services import notification_email, notifications_record
from agreements import services
from agreements.models import Agreement
from agreements.selectors import checkpoint_holders
from models_registry.models import Checkpoint

SUBJECTS = {
    "sent": "Please sign: model-sharing agreement {ref} with {lab}",
    "reminder": "Reminder: agreement {ref} is waiting for your signature",
    "activated": "Agreement {ref} is active: your access has started",
    "terminated": "Agreement {ref} was terminated",
    "voided": "Agreement {ref} was withdrawn",
    "countersign": "Ready to countersign: agreement {ref} signed by {org}",
    "declined": "Agreement {ref} was declined by {org}",
}
AMENDMENT_SUBJECTS = {
    "sent": "Please sign: amendment {ref} to agreement {amends} with {lab}",
    "reminder": "Reminder: amendment {ref} is waiting for your signature",
    "activated": "Amendment {ref} is active: the access it grants has started",
}
NOTICE_KINDS = {
    "sent": NotificationKind.AGREEMENT_TO_SIGN,
    "reminder": NotificationKind.AGREEMENT_TO_SIGN,
    "activated": NotificationKind.AGREEMENT_ACTIVE,
    "terminated": NotificationKind.AGREEMENT_ENDED,
    "voided": NotificationKind.AGREEMENT_ENDED,
    "countersign": NotificationKind.AGREEMENT_TO_COUNTERSIGN,
    "declined": NotificationKind.AGREEMENT_DECLINED,
}


def _send(agreement: Agreement, kind: str, recipients: list[User], occasion: int | None = None) -> int:
    """Tell `recipients` in the app and by email; returns how many emails went out now.

    The task runs after the change committed, so it emails at once rather than queueing more work;
    the notice's dedupe key makes a second run (redelivery, retry) list and email nothing new.
    """
    lab = lab_organization()
    lab_name = lab.legal_name if lab else "the Lab"
    context = {"agreement": agreement, "kind": kind, "lab_name": lab_name}
    subjects = AMENDMENT_SUBJECTS if agreement.amends_id and kind in AMENDMENT_SUBJECTS else SUBJECTS
    subject = subjects[kind].format(
        ref=agreement.reference,
        lab=lab_name,
        org=agreement.organization.name,
        amends=agreement.amends.reference if agreement.amends else "",
    )
    notifications = notifications_record(
        users=recipients,
        kind=NOTICE_KINDS[kind],
        title=subject,
        body=render_to_string("agreements/email/notice.txt", context).strip(),
        url=reverse("agreement_detail", args=[agreement.pk]),
        dedupe_key=f"agreement.{kind}:{agreement.pk}" + (f":{occasion}" if occasion is not None else ""),
    )
    return sum(notification_email(notification=notification) for notification in notifications)


def _agreement(agreement_id: int) -> Agreement | None:
    return Agreement.objects.select_related("organization", "amends").filter(pk=agreement_id).first()


# What each email says holds only while the agreement is in one of these states; checked when it is sent.
_ENDED = (Agreement.Status.EXPIRED, Agreement.Status.TERMINATED, Agreement.Status.SUPERSEDED)
STILL_TRUE = {
    "sent": (Agreement.Status.OUT_FOR_SIGNATURE,),
    "reminder": (Agreement.Status.OUT_FOR_SIGNATURE,),
    "activated": (Agreement.Status.ACTIVE, *_ENDED),  # it did become active, whatever came after
    "terminated": (Agreement.Status.TERMINATED,),
    "voided": (Agreement.Status.VOIDED,),
}


@shared_task(autoretry_for=(ConnectionError, TimeoutError), retry_backoff=True, max_retries=5)
def notify_signatories(agreement_id: int, kind: str, occasion: int | None = None) -> int:
    """Email the partner's signatories (or, once active, everyone at the partner who manages access).

    `occasion` tells apart the notices of a kind that recurs (the reminder's number).
    """
    agreement = _agreement(agreement_id)
    if agreement is None:
        return 0
    if agreement.status not in STILL_TRUE[kind]:
        return 0  # the agreement moved on since the email was queued: "please sign" for a signed one misleads
    roles = [Role.SIGNATORY] if kind in ("sent", "reminder", "voided") else [Role.SIGNATORY, Role.PARTNER_ADMIN]
    recipients = list(User.objects.filter(membership__organization=agreement.organization, membership__role__in=roles))
    if kind == "reminder" and occasion is None:
        occasion = agreement.reminders_sent
    return _send(agreement, kind, recipients, occasion)


def _lab_legal() -> list[User]:
    return list(User.objects.filter(membership__role=Role.LEGAL, is_active=True))


@shared_task(autoretry_for=(ConnectionError, TimeoutError), retry_backoff=True, max_retries=5)
def notify_lab_countersign(agreement_id: int) -> int:
    agreement = _agreement(agreement_id)
    if agreement is None or agreement.status != Agreement.Status.PARTNER_SIGNED:
        return 0
    return _send(agreement, "countersign", _lab_legal())


@shared_task(autoretry_for=(ConnectionError, TimeoutError), retry_backoff=True, max_retries=5)
def notify_lab_declined(agreement_id: int) -> int:
    agreement = _agreement(agreement_id)
    if agreement is None or agreement.status != Agreement.Status.DECLINED:
        return 0
    return _send(agreement, "declined", _lab_legal())


@shared_task(autoretry_for=(ConnectionError, TimeoutError), retry_backoff=True, max_retries=5)
def notify_checkpoint_embargoed(checkpoint_id: int, event_seq: int) -> int:
    """Tell everyone at the organisations holding a grant of the checkpoint that it is embargoed.

    Sent by name from the registry, which cannot see grants. `event_seq` (the embargo's audit event)
    names this embargo: a later one is told again, a redelivered message is not.
    """
    checkpoint = Checkpoint.objects.filter(pk=checkpoint_id).first()
    if checkpoint is None or checkpoint.status != Checkpoint.Status.EMBARGOED:
        return 0  # restored (or withdrawn, which tells its own story) since the embargo
    reason = f": {checkpoint.status_reason}" if checkpoint.status_reason else "."
    notifications = notifications_record(
        users=checkpoint_holders(checkpoint=checkpoint),
        kind=NotificationKind.CHECKPOINT_EMBARGOED,
        title=f"{checkpoint.slug} is embargoed: generation on it is paused",
        body=(
            f"The lab embargoed {checkpoint.display_name} ({checkpoint.slug}){reason} New and queued jobs on it "
            f"are refused until the lab restores it. Your organisation's grant stays, so access returns then."
        ),
        url=reverse("checkpoint_detail", args=[checkpoint.slug]),
        dedupe_key=f"checkpoint.embargoed:{checkpoint.pk}:{event_seq}",
    )
    return sum(notification_email(notification=notification) for notification in notifications)


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


@shared_task
def check_obligations() -> dict[str, list[str]]:
    """Every 15 minutes: remind partners of reports due soon and record the ones that lapsed.

    Access pauses the moment a report lapses whatever this task does (access_check reads the due
    date); the task only tells people, once per due date.
    """
    return services.obligations_check_due()
