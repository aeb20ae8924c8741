"""Notifications: stored once per person and event, emailed once, switched off by the person, seen only by them."""

from __future__ import annotations

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse

from accounts import services
from accounts.models import Notification, NotificationKind, NotificationOptOut
from accounts.tasks import email_notification
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def tell(users, *, kind=NotificationKind.JOB_CANCELLED, key="job.cancelled:1", title="Job #1 on gpt2 was cancelled"):
    return services.notifications_send(
        users=users, kind=kind, title=title, body="Cancelled by the lab.", url="/jobs/1/", dedupe_key=key
    )


def text_of(response) -> str:
    return response.content.decode()


# --- Services ------------------------------------------------------------------------------------------


def test_a_notice_is_listed_and_emailed_once_with_an_absolute_link(
    settings, researcher_a, django_capture_on_commit_callbacks
):
    settings.SITE_URL = "https://modelpact.example.org"
    with django_capture_on_commit_callbacks(execute=True):
        tell([researcher_a])
    (notification,) = Notification.objects.filter(user=researcher_a)
    assert notification.title == "Job #1 on gpt2 was cancelled" and notification.read_at is None
    assert notification.emailed_at is not None
    (email,) = mail.outbox
    assert email.to == [researcher_a.email] and email.subject == "Job #1 on gpt2 was cancelled"
    assert "https://modelpact.example.org/jobs/1/" in email.body
    assert "https://modelpact.example.org/account/notifications/" in email.body  # where to switch it off


def test_the_same_event_told_twice_lists_and_emails_it_once(researcher_a, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        tell([researcher_a])
        tell([researcher_a])  # a redelivered task, or a repeated call
    assert Notification.objects.filter(user=researcher_a).count() == 1
    assert len(mail.outbox) == 1


def test_an_email_task_delivered_twice_sends_one_email(researcher_a, django_capture_on_commit_callbacks):
    (notification,) = tell([researcher_a])  # on_commit never fires here: the task has not run yet
    assert email_notification(notification.pk) is True
    assert email_notification(notification.pk) is False  # redelivered under acks_late
    assert len(mail.outbox) == 1


def test_a_failed_send_is_sent_by_the_retry(researcher_a, monkeypatch):
    (notification,) = tell([researcher_a])

    def down(*args, **kwargs):
        raise ConnectionError("mail server unreachable")

    monkeypatch.setattr(services, "send_mail", down)
    with pytest.raises(ConnectionError):
        email_notification(notification.pk)
    monkeypatch.undo()
    assert email_notification(notification.pk) is True
    assert len(mail.outbox) == 1


def test_work_that_is_rolled_back_tells_nobody(researcher_a, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError), transaction.atomic():
        tell([researcher_a])
        raise RuntimeError("the change failed after the notice was written")
    assert not Notification.objects.exists()
    assert mail.outbox == []


def test_deactivated_people_are_not_told(admin_a, researcher_a, django_capture_on_commit_callbacks):
    services.user_set_active(actor=admin_a, user=researcher_a, active=False)
    with django_capture_on_commit_callbacks(execute=True):
        tell([researcher_a, admin_a])
    assert [n.user for n in Notification.objects.all()] == [admin_a]
    assert [m.to for m in mail.outbox] == [[admin_a.email]]


def test_a_switched_off_kind_is_neither_listed_nor_emailed(researcher_a, signer_a, django_capture_on_commit_callbacks):
    services.notification_settings_set(actor=researcher_a, enabled=[])
    with django_capture_on_commit_callbacks(execute=True):
        tell([researcher_a, signer_a])
    assert [n.user for n in Notification.objects.all()] == [signer_a]
    assert [m.to for m in mail.outbox] == [[signer_a.email]]


def test_essential_notices_reach_people_who_switched_everything_off(signer_a, django_capture_on_commit_callbacks):
    services.notification_settings_set(actor=signer_a, enabled=[])
    assert not NotificationOptOut.objects.filter(user=signer_a, kind=NotificationKind.AGREEMENT_TO_SIGN).exists()
    with django_capture_on_commit_callbacks(execute=True):
        tell([signer_a], kind=NotificationKind.AGREEMENT_TO_SIGN, key="agreement.sent:1", title="Please sign")
    assert Notification.objects.filter(user=signer_a).count() == 1 and len(mail.outbox) == 1


def test_settings_refuse_a_kind_the_person_does_not_receive_and_audit_a_change(researcher_a):
    with pytest.raises(ValidationError, match="access_request_received is not a notification you receive"):
        services.notification_settings_set(actor=researcher_a, enabled=[NotificationKind.ACCESS_REQUEST_RECEIVED])
    off = services.notification_settings_set(actor=researcher_a, enabled=[NotificationKind.ACCESS_REQUEST_DECIDED])
    # Every other optional kind a researcher receives; access being paused (essential) cannot be switched off.
    assert off == sorted(
        [
            NotificationKind.CHECKPOINT_EMBARGOED,
            NotificationKind.JOB_CANCELLED,
            NotificationKind.OBLIGATION_DUE,
            NotificationKind.FINDING_REVIEWED,
            NotificationKind.RELEASE_DECIDED,
        ]
    )
    assert NotificationKind.ACCESS_PAUSED not in off
    event = AuditEvent.objects.get(action="user.notification_settings_changed")
    assert event.data["switched_off"] == off
    services.notification_settings_set(actor=researcher_a, enabled=[NotificationKind.ACCESS_REQUEST_DECIDED])
    assert AuditEvent.objects.filter(action="user.notification_settings_changed").count() == 1  # nothing changed


# --- Pages ---------------------------------------------------------------------------------------------


def test_the_home_page_shows_unread_notices_with_their_links(client, researcher_a):
    (notification,) = tell([researcher_a])
    client.force_login(researcher_a)
    page = text_of(client.get(reverse("home")))
    assert "Job #1 on gpt2 was cancelled" in page and "1 unread" in page
    assert reverse("notification_open", args=[notification.pk]) in page


def test_opening_a_notice_marks_it_read_and_goes_to_its_page(client, researcher_a):
    (notification,) = tell([researcher_a])
    client.force_login(researcher_a)
    response = client.get(reverse("notification_open", args=[notification.pk]))
    assert response.status_code == 302 and response["Location"] == "/jobs/1/"
    notification.refresh_from_db()
    assert notification.read_at is not None
    assert "unread" not in text_of(client.get(reverse("home")))


def test_mark_all_read_empties_the_unread_count(client, researcher_a):
    tell([researcher_a])
    tell([researcher_a], key="job.cancelled:2", title="Job #2 on gpt2 was cancelled")
    client.force_login(researcher_a)
    page = text_of(client.get(reverse("notification_list")))
    assert "2 unread" in page and "Job #2 on gpt2 was cancelled" in page
    page = text_of(client.post(reverse("notifications_mark_all_read"), follow=True))
    assert "2 notifications marked read." in page
    assert not Notification.objects.filter(user=researcher_a, read_at=None).exists()


def test_nobody_sees_or_opens_another_persons_notices(client, researcher_a, researcher_b, signer_a):
    (notification,) = tell([researcher_a])
    for other in (researcher_b, signer_a):
        client.force_login(other)
        assert client.get(reverse("notification_open", args=[notification.pk])).status_code == 404
        assert "Job #1 on gpt2 was cancelled" not in text_of(client.get(reverse("home")))
        assert "Job #1 on gpt2 was cancelled" not in text_of(client.get(reverse("notification_list")))
        client.post(reverse("notifications_mark_all_read"))
    notification.refresh_from_db()
    assert notification.read_at is None


def test_signed_out_visitors_are_sent_to_sign_in(client, researcher_a):
    (notification,) = tell([researcher_a])
    for url in (
        reverse("notification_list"),
        reverse("notification_settings"),
        reverse("notification_open", args=[notification.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 302 and reverse("account_login") in response["Location"]


def test_the_settings_page_switches_off_an_optional_kind(client, researcher_a):
    client.force_login(researcher_a)
    page = text_of(client.get(reverse("notification_settings")))
    assert "Notification settings" in page
    assert "A checkpoint your organisation holds is withdrawn" in page  # listed as always on
    assert 'value="checkpoint_withdrawn"' not in page  # and offered no checkbox
    keep_on = [
        NotificationKind.ACCESS_REQUEST_DECIDED,
        NotificationKind.CHECKPOINT_EMBARGOED,
        NotificationKind.OBLIGATION_DUE,
        NotificationKind.FINDING_REVIEWED,
        NotificationKind.RELEASE_DECIDED,
    ]
    assert f'value="{NotificationKind.OBLIGATION_DUE}"' in page  # a reminder of a report due can be switched off
    assert 'value="access_paused"' not in page  # being paused for an overdue one cannot
    response = client.post(reverse("notification_settings"), {"enabled": keep_on}, follow=True)
    assert "1 kind of notification switched off." in text_of(response)
    assert list(NotificationOptOut.objects.filter(user=researcher_a).values_list("kind", flat=True)) == [
        NotificationKind.JOB_CANCELLED
    ]


def test_the_settings_page_explains_a_wrong_choice(client, researcher_a):
    client.force_login(researcher_a)
    response = client.post(reverse("notification_settings"), {"enabled": ["checkpoint_withdrawn"]})
    assert response.status_code == 400
    assert "checkpoint_withdrawn is not a notification you can switch on or off; choose from the list." in text_of(
        response
    )
    response = client.post(reverse("notification_settings"), {"enabled": ["<script>x</script>"]})
    assert response.status_code == 400 and "<script>x</script>" not in text_of(response)
    assert not NotificationOptOut.objects.exists()
