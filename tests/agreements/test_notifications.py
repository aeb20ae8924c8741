"""Who is told what, and once, as access requests, amendments and checkpoints change."""

from __future__ import annotations

import pytest
from django.core import mail

from accounts.models import Notification, NotificationKind
from accounts.services import notification_settings_set
from agreements import services
from agreements.models import Agreement
from agreements.tasks import notify_checkpoint_embargoed, notify_signatories
from models_registry import services as registry
from models_registry.models import Checkpoint
from tests.builders import sign

pytestmark = pytest.mark.django_db

PURPOSE = "Measuring how detectable GPT-2 Large samples are in news-style text."


def told(kind: str) -> list[str]:
    """Who holds a notice of this kind, by email."""
    return sorted(Notification.objects.filter(kind=kind).values_list("user__email", flat=True))


def mailed(subject_part: str) -> list[str]:
    return sorted(address for m in mail.outbox if subject_part in m.subject for address in m.to)


@pytest.fixture
def request_a(researcher_a, active, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        return services.access_request_create(
            actor=researcher_a, checkpoints=[Checkpoint.objects.get(slug="gpt2-large")], purpose=PURPOSE
        )


def test_lab_legal_and_admins_are_told_when_a_request_arrives(
    everyone, legal, lab_admin, auditor, researcher_a, active, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        request = services.access_request_create(
            actor=researcher_a, checkpoints=[Checkpoint.objects.get(slug="gpt2-large")], purpose=PURPOSE
        )
    assert told(NotificationKind.ACCESS_REQUEST_RECEIVED) == [lab_admin.email, legal.email]
    assert mailed(f"Access request #{request.pk} from Partner A: gpt2-large") == [lab_admin.email, legal.email]
    email = next(m for m in mail.outbox if "Access request" in m.subject)
    assert f"/access-requests/{request.pk}/" in email.body and PURPOSE in email.body


def test_the_requester_and_partner_admins_hear_of_an_approval(
    everyone, legal, researcher_a, admin_a, request_a, django_capture_on_commit_callbacks
):
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        services.access_request_approve(actor=legal, access_request=request_a)
    # Not the signatory (who hears when the amendment is sent), nor anyone at partner B.
    assert told(NotificationKind.ACCESS_REQUEST_DECIDED) == [admin_a.email, researcher_a.email]
    assert mailed(f"Access request #{request_a.pk} approved: gpt2-large") == [admin_a.email, researcher_a.email]


def test_a_rejection_tells_the_reason(legal, researcher_a, admin_a, request_a, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        services.access_request_reject(
            actor=legal, access_request=request_a, reason="gpt2-large is not released to partners yet."
        )
    assert mailed(f"Access request #{request_a.pk} rejected: gpt2-large") == [admin_a.email, researcher_a.email]
    email = next(m for m in mail.outbox if "rejected" in m.subject)
    assert "gpt2-large is not released to partners yet." in email.body


def test_an_admin_who_switched_decisions_off_is_not_told(
    legal, researcher_a, admin_a, request_a, django_capture_on_commit_callbacks
):
    notification_settings_set(actor=admin_a, enabled=[])
    with django_capture_on_commit_callbacks(execute=True):
        services.access_request_reject(actor=legal, access_request=request_a, reason="Not released to partners yet.")
    assert told(NotificationKind.ACCESS_REQUEST_DECIDED) == [researcher_a.email]


def test_an_amendment_ready_to_sign_and_then_active_is_told_to_those_who_act(
    legal, signer_a, admin_a, researcher_a, request_a, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        request = services.access_request_approve(actor=legal, access_request=request_a)
        amendment = services.agreement_send(actor=legal, agreement=request.amendment)
    assert mailed("Please sign: amendment") == [signer_a.email]
    (please_sign,) = [m for m in mail.outbox if "Please sign: amendment" in m.subject]
    assert f"to agreement {amendment.amends.reference}" in please_sign.subject
    assert f"/agreements/{amendment.pk}/" in please_sign.body
    assert "cannot be switched off" in please_sign.body
    with django_capture_on_commit_callbacks(execute=True):
        sign(signer_a, amendment)
    amendment.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        sign(legal, amendment)
    assert mailed(f"Ready to countersign: agreement {amendment.reference}") == [legal.email]
    assert mailed(f"Amendment {amendment.reference} is active") == [admin_a.email, signer_a.email]
    assert researcher_a.email not in mailed(amendment.reference)


def test_an_agreement_task_delivered_twice_lists_and_emails_once(signer_a, admin_a, active):
    mail.outbox.clear()
    # The countersignature queued this task on commit (which the fixture never fired); the broker delivers it twice.
    assert notify_signatories(active.pk, "activated") == 2
    assert notify_signatories(active.pk, "activated") == 0
    assert mailed(f"Agreement {active.reference} is active") == [admin_a.email, signer_a.email]
    assert len(mail.outbox) == 2
    assert Notification.objects.filter(user=signer_a, kind=NotificationKind.AGREEMENT_ACTIVE).count() == 1


def test_an_agreement_notice_queued_before_it_moved_on_is_not_listed_either(signer_a, active):
    Notification.objects.all().delete()
    assert notify_signatories(active.pk, "sent") == 0  # "please sign" for an active agreement would mislead
    assert not Notification.objects.exists()


def test_holders_of_an_embargoed_checkpoint_are_told_and_outsiders_are_not(
    lab_admin, admin_a, signer_a, researcher_a, researcher_b, active, django_capture_on_commit_callbacks
):
    gpt2 = Checkpoint.objects.get(slug="gpt2")
    with django_capture_on_commit_callbacks(execute=True):
        registry.checkpoint_embargo(actor=lab_admin, checkpoint=gpt2, reason="reviewing a reported misuse")
    assert told(NotificationKind.CHECKPOINT_EMBARGOED) == sorted([admin_a.email, signer_a.email, researcher_a.email])
    email = next(m for m in mail.outbox if "gpt2 is embargoed" in m.subject)
    assert "reviewing a reported misuse" in email.body and "/checkpoints/gpt2/" in email.body
    # Restored and embargoed again: a second embargo is a second notice.
    registry.checkpoint_restore(actor=lab_admin, checkpoint=gpt2)
    with django_capture_on_commit_callbacks(execute=True):
        registry.checkpoint_embargo(actor=lab_admin, checkpoint=gpt2, reason="a second review")
    assert Notification.objects.filter(user=researcher_a, kind=NotificationKind.CHECKPOINT_EMBARGOED).count() == 2


def test_an_embargo_lifted_before_its_task_ran_tells_nobody(lab_admin, researcher_a, active):
    gpt2 = Checkpoint.objects.get(slug="gpt2")
    registry.checkpoint_embargo(actor=lab_admin, checkpoint=gpt2)  # on_commit never fires here
    registry.checkpoint_restore(actor=lab_admin, checkpoint=gpt2)
    assert notify_checkpoint_embargoed(gpt2.pk, 1) == 0
    assert not Notification.objects.filter(kind=NotificationKind.CHECKPOINT_EMBARGOED).exists()


def test_terminating_an_agreement_tells_signatories_and_admins(
    legal, signer_a, admin_a, researcher_a, active, django_capture_on_commit_callbacks
):
    notification_settings_set(actor=admin_a, enabled=[])  # essential: reaches them anyway
    with django_capture_on_commit_callbacks(execute=True):
        services.agreement_terminate(actor=legal, agreement=active, reason="Breach of clause 4 (publication).")
    assert Agreement.objects.get(pk=active.pk).status == Agreement.Status.TERMINATED
    assert told(NotificationKind.AGREEMENT_ENDED) == [admin_a.email, signer_a.email]
