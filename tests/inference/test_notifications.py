"""A job's requester hears when someone else (or the kill switch) cancels it; holders hear of a withdrawal."""

from __future__ import annotations

import pytest
from django.core import mail

from accounts.models import Notification, NotificationKind
from inference import services
from inference.models import GenerationJob
from tests.builders import make_job

pytestmark = pytest.mark.django_db


def told(kind: str) -> list[str]:
    return sorted(Notification.objects.filter(kind=kind).values_list("user__email", flat=True))


@pytest.fixture
def queued_job(active, researcher_a) -> GenerationJob:
    return make_job(active.grants.get(checkpoint__slug="gpt2"), researcher_a)


def test_the_requester_is_told_when_a_colleague_cancels_their_job(
    admin_a, researcher_a, queued_job, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.job_cancel(actor=admin_a, job=queued_job)
    assert told(NotificationKind.JOB_CANCELLED) == [researcher_a.email]
    (email,) = mail.outbox
    assert email.subject == f"Job #{queued_job.pk} on gpt2 was cancelled"
    assert admin_a.email in email.body and f"/jobs/{queued_job.pk}/" in email.body


def test_cancelling_ones_own_job_tells_nobody(researcher_a, queued_job, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        services.job_cancel(actor=researcher_a, job=queued_job)
    assert not Notification.objects.exists() and mail.outbox == []


def test_the_kill_switch_tells_holders_and_the_owners_of_cancelled_jobs(
    lab_admin, admin_a, signer_a, researcher_a, researcher_b, queued_job, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.checkpoint_withdraw(
            actor=lab_admin, checkpoint=queued_job.checkpoint, reason="weights leaked publicly"
        )
    assert told(NotificationKind.CHECKPOINT_WITHDRAWN) == sorted([admin_a.email, signer_a.email, researcher_a.email])
    assert told(NotificationKind.JOB_CANCELLED) == [researcher_a.email]
    withdrawn = next(m for m in mail.outbox if "gpt2 was withdrawn" in m.subject)
    assert "weights leaked publicly" in withdrawn.body and "cannot be switched off" in withdrawn.body
    assert researcher_b.email not in {address for m in mail.outbox for address in m.to}
