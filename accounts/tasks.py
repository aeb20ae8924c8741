from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.urls import reverse

from accounts.models import Invitation, Notification
from accounts.services import notification_email


@shared_task(autoretry_for=(ConnectionError, TimeoutError), retry_backoff=True, max_retries=5)
def send_invitation_email(invitation_id: int, token: str) -> None:
    """Email the invitation link; the token is only ever in this message, never stored in clear."""
    invitation = Invitation.objects.select_related("organization", "invited_by").filter(pk=invitation_id).first()
    if invitation is None or not invitation.is_open:
        return
    context = {
        "invitation": invitation,
        "url": settings.SITE_URL + reverse("invitation_accept", args=[token]),
    }
    send_mail(
        subject=f"You are invited to ModelPact by {invitation.organization.name}",
        message=render_to_string("accounts/email/invitation.txt", context),
        from_email=None,
        recipient_list=[invitation.email],
    )


@shared_task(autoretry_for=(ConnectionError, TimeoutError), retry_backoff=True, max_retries=5)
def email_notification(notification_id: int) -> bool:
    """Email one notice; the service claims it first, so a redelivered message sends nothing more."""
    notification = Notification.objects.filter(pk=notification_id).first()
    if notification is None:
        return False
    return notification_email(notification=notification)
