"""Services queue their follow-up tasks by name, on commit: a misspelt name fails at once, and work that
was rolled back sends nothing."""

from __future__ import annotations

import pytest
from celery.exceptions import NotRegistered
from django.core import mail
from django.db import transaction

from accounts import services
from core.tasks import task_send


def test_a_task_name_no_app_defines_is_refused_when_sent():
    with pytest.raises(NotRegistered):
        task_send("agreements.tasks.notify_signatorys", 1, "sent")


def test_an_invitation_rolled_back_sends_no_email(db, partner_a, admin_a, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError), transaction.atomic():
        services.invitation_create(
            actor=admin_a, organization=partner_a, email="new@partner-a.example", role="researcher"
        )
        raise RuntimeError("the request failed after the invitation was written")
    assert mail.outbox == []


def test_an_invitation_committed_sends_its_email_once(db, partner_a, admin_a, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        services.invitation_create(
            actor=admin_a, organization=partner_a, email="new@partner-a.example", role="researcher"
        )
    assert [m.to for m in mail.outbox] == [["new@partner-a.example"]]
