"""The agreement lifecycle: who may take each step from which state, what is frozen, and what is recorded."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import time_machine
from django.core import mail
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import call_command
from django.utils import timezone

from agreements import selectors, services
from agreements.models import AccessGrant, Agreement, Signature, TemplateVersion
from agreements.rendering import sha256_text
from agreements.tasks import notify_signatories
from audit.models import AuditEvent
from audit.selectors import audit_chain_verify
from models_registry.models import Checkpoint
from tests.builders import DEFAULT_TEMPLATE, OBLIGATION_TERMS_CLAUSE, draft_agreement, sign

pytestmark = pytest.mark.django_db


def events_for(agreement: Agreement) -> list[str]:
    return list(
        AuditEvent.objects.filter(target_type="agreements.agreement", target_id=str(agreement.pk))
        .order_by("seq")
        .values_list("action", flat=True)
    )


# --- Templates ---------------------------------------------------------------------------------------


def test_publishing_freezes_the_version_and_its_hash(legal, published_version):
    assert published_version.status == TemplateVersion.Status.PUBLISHED
    assert published_version.sha256 == sha256_text(DEFAULT_TEMPLATE)
    with pytest.raises(ValidationError, match="can no longer change"):
        services.template_version_save(actor=legal, version=published_version, body="# Changed")
    published_version.refresh_from_db()
    assert published_version.body == DEFAULT_TEMPLATE


def test_a_new_draft_starts_from_the_latest_version(legal, published_version):
    draft = services.template_version_new_draft(actor=legal, template=published_version.template)
    assert draft.number == 2 and draft.body == published_version.body and draft.is_draft
    assert services.template_version_new_draft(actor=legal, template=published_version.template) == draft


def test_a_retired_version_makes_no_new_agreements(legal, partner_a, published_version, small_checkpoints):
    services.template_version_retire(actor=legal, version=published_version)
    with pytest.raises(ValidationError) as excinfo:
        draft_agreement(legal, partner_a, published_version, small_checkpoints)
    assert "template_version" in excinfo.value.error_dict


@pytest.mark.parametrize(
    ("injection", "line"),
    [
        ("{{ settings.SECRET_KEY }}", 3),
        ("{% load static %}", 3),
        ('{% include "base.html" %}', 3),
        ("{{ user.password }}", 3),
        ("{{ organization.__class__.__mro__ }}", 3),
        ('{{ organization.name|attr:"x" }}', 3),
    ],
)
def test_template_injection_is_refused_at_save_with_its_line(legal, published_version, injection, line):
    draft = services.template_version_new_draft(actor=legal, template=published_version.template)
    with pytest.raises(ValidationError) as excinfo:
        services.template_version_save(actor=legal, version=draft, body=f"# Title\n\nHello {injection}\n")
    assert f"Line {line}" in " ".join(excinfo.value.message_dict["body"])
    draft.refresh_from_db()
    assert injection not in draft.body


def test_raw_html_and_script_links_never_reach_the_document(legal, partner_a, signer_a, small_checkpoints):
    body = (
        "# Agreement\n\n<script>alert(1)</script>\n\n[click](javascript:alert(1))\n\n"
        "<img src=x onerror=alert(1)>\n\nBetween {{ lab.legal_name }} and {{ organization.legal_name }}.\n"
    ) + OBLIGATION_TERMS_CLAUSE
    version = services.template_version_publish(
        actor=legal, version=services.template_create(actor=legal, name="Hostile", body=body)
    )
    partner_a.legal_name = "ACME <b>&"
    partner_a.save()
    agreement = services.agreement_send(
        actor=legal, agreement=draft_agreement(legal, partner_a, version, small_checkpoints)
    )
    html = agreement.document_html
    # Raw HTML shows as inert text; no tag, handler or script link survives.
    assert "<script" not in html and "<img" not in html and "href=" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "ACME &lt;b&gt;&amp;" in html


@pytest.mark.parametrize("persona", ["auditor", "signer_a", "researcher_a", "admin_a"])
def test_only_legal_and_lab_admins_edit_templates(request, persona):
    with pytest.raises(PermissionDenied):
        services.template_create(actor=request.getfixturevalue(persona), name="T", body="# T")


# --- Drafting and sending -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"term_months": 0}, "term_months"),
        ({"daily_token_quota": -5}, "daily_token_quota"),
        ({"effective_date": timezone.now().date() - timedelta(days=3)}, "effective_date"),
        ({"purpose": "too short"}, "purpose"),
    ],
)
def test_bad_terms_are_refused_per_field(legal, partner_a, published_version, small_checkpoints, overrides, field):
    with pytest.raises(ValidationError) as excinfo:
        draft_agreement(legal, partner_a, published_version, small_checkpoints, **overrides)
    assert field in excinfo.value.error_dict
    assert not Agreement.objects.exists()


def test_an_agreement_needs_checkpoints_that_are_available(legal, partner_a, published_version):
    xl = Checkpoint.objects.get(slug="gpt2-xl")
    xl.status = Checkpoint.Status.EMBARGOED
    xl.save()
    with pytest.raises(ValidationError, match="gpt2-xl \\(embargoed\\)"):
        draft_agreement(legal, partner_a, published_version, [xl])
    with pytest.raises(ValidationError, match="at least one checkpoint"):
        draft_agreement(legal, partner_a, published_version, [])


def test_sending_freezes_the_document_and_emails_the_signatories(
    legal, signer_a, researcher_a, draft, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        sent = services.agreement_send(actor=legal, agreement=draft)
    assert sent.status == Agreement.Status.OUT_FOR_SIGNATURE
    assert sent.document_sha256 == sha256_text(sent.document_html)
    assert "Partner A Research Institute" in sent.document_html
    assert "GPT-2 Medium" in sent.document_html
    assert [m.to for m in mail.outbox] == [["signer@partner-a.example"]]
    assert f"/agreements/{sent.pk}/" in mail.outbox[0].body
    with pytest.raises(ValidationError, match="can no longer change"):
        services.agreement_update(
            actor=legal,
            agreement=sent,
            terms=dataclasses.replace(services.AgreementTerms.of(sent), term_months=24),
        )


def test_a_document_with_blank_values_is_not_sent(legal, partner_a, draft):
    partner_a.address = ""
    partner_a.save()
    with pytest.raises(ValidationError, match=r"blanks for organization\.address"):
        services.agreement_send(actor=legal, agreement=draft)
    draft.refresh_from_db()
    assert draft.status == Agreement.Status.DRAFT and not draft.document_html


def test_an_address_typed_on_several_lines_reads_as_one_line_in_the_document(legal, partner_a, draft):
    # A browser's textarea sends CRLF line breaks.
    partner_a.address = "1 Example Street\r\nCambridge CB1 1AA\r\n\r\nUnited Kingdom\r\n"
    partner_a.save()
    sent = services.agreement_send(actor=legal, agreement=draft)
    assert "registered address is 1 Example Street, Cambridge CB1 1AA, United Kingdom (the" in sent.document_html


def test_an_email_queued_before_the_agreement_moved_on_is_not_sent(legal, signer_a, sent):
    sign(signer_a, sent)
    sent.refresh_from_db()
    sign(legal, sent)
    mail.outbox.clear()
    # "Please sign" queued at send time, delivered after both signatures: it would mislead.
    assert notify_signatories(sent.pk, "sent") == 0
    assert notify_signatories(sent.pk, "reminder") == 0
    assert notify_signatories(sent.pk, "voided") == 0
    assert mail.outbox == []
    assert notify_signatories(sent.pk, "activated") == 1
    assert "is active" in mail.outbox[0].subject


def test_the_signed_document_shows_who_signed_when_and_the_hash_signed(legal, signer_a, sent):
    blank = selectors.agreement_document_as_signed(sent, [])
    assert blank == sent.document_html and "Signed electronically" not in blank
    sign(signer_a, sent)
    sent.refresh_from_db()
    sign(legal, sent)
    sent.refresh_from_db()
    shown = selectors.agreement_document_as_signed(sent, selectors.agreement_signatures(sent))
    assert shown.count("Signed electronically by") == 2 and "signature-unsigned" not in shown
    assert "Signed electronically by Sofia Signer" in shown and "Signed electronically by Lena Legal" in shown
    assert shown.count(f"Document SHA-256: <code>{sent.document_sha256}</code>") == 2
    assert sha256_text(sent.document_html) == sent.document_sha256  # the frozen bytes are untouched


def test_the_frozen_document_does_not_follow_later_changes(legal, partner_a, sent):
    frozen, digest = sent.document_html, sent.document_sha256
    partner_a.legal_name = "Renamed Institute"
    partner_a.save()
    sent.refresh_from_db()
    assert sent.document_html == frozen and sent.document_sha256 == digest


def test_an_organisation_without_a_signatory_cannot_be_sent_to(legal, partner_b, published_version, small_checkpoints):
    agreement = draft_agreement(legal, partner_b, published_version, small_checkpoints)
    with pytest.raises(ValidationError, match="no active signatory"):
        services.agreement_send(actor=legal, agreement=agreement)
    agreement.refresh_from_db()
    assert agreement.status == Agreement.Status.DRAFT and not agreement.document_html


# --- Signing ---------------------------------------------------------------------------------------------


def test_signing_then_countersigning_activates_and_grants(legal, signer_a, sent):
    partner = sign(signer_a, sent)
    sent.refresh_from_db()
    assert sent.status == Agreement.Status.PARTNER_SIGNED
    assert partner.side == Signature.Side.PARTNER
    assert partner.document_sha256 == sent.document_sha256
    assert partner.consent_sha256 == sha256_text(services.CONSENT_TEXT)
    assert (partner.ip, partner.time_zone, partner.reauth_method) == ("203.0.113.7", "Europe/Berlin", "password")

    sign(legal, sent)
    sent.refresh_from_db()
    assert sent.status == Agreement.Status.ACTIVE
    grants = AccessGrant.objects.filter(agreement=sent).order_by("checkpoint__parameter_count")
    assert [g.checkpoint.slug for g in grants] == ["gpt2", "gpt2-medium"]
    assert all(g.daily_token_quota == 50_000 and g.ends_at.date() == sent.end_date for g in grants)


def test_signing_a_changed_document_is_refused_and_the_refusal_is_audited(signer_a, sent):
    with pytest.raises(ValidationError, match="document changed"):
        sign(signer_a, sent, shown_document_sha256="0" * 64)
    sent.refresh_from_db()
    assert sent.status == Agreement.Status.OUT_FOR_SIGNATURE
    assert not Signature.objects.exists()
    assert events_for(sent)[-1] == "agreement.signing_refused"


def test_signing_needs_a_fresh_reauthentication(signer_a, sent):
    with pytest.raises(ValidationError, match="Confirm your identity"):
        sign(signer_a, sent, reauth_at=timezone.now() - timedelta(minutes=6))
    with pytest.raises(ValidationError, match="Confirm your identity"):
        sign(signer_a, sent, reauth_method=None, reauth_at=None)
    assert not Signature.objects.exists()


def test_signing_needs_consent_name_and_title(signer_a, sent):
    with pytest.raises(ValidationError) as excinfo:
        sign(signer_a, sent, consent=False, full_name=" ", title="")
    assert set(excinfo.value.error_dict) == {"consent", "full_name", "title"}


@pytest.mark.parametrize("persona", ["researcher_a", "admin_a", "signer_b", "auditor"])
def test_only_the_partners_own_signatory_signs(request, sent, persona):
    with pytest.raises(PermissionDenied):
        sign(request.getfixturevalue(persona), sent)


def test_legal_cannot_countersign_before_the_partner_signs(legal, sent):
    with pytest.raises(ValidationError, match="out for signature; it cannot be countersigned"):
        sign(legal, sent)


def test_a_signatory_cannot_sign_twice(signer_a, sent):
    sign(signer_a, sent)
    sent.refresh_from_db()
    with pytest.raises(ValidationError, match="cannot be signed by the partner"):
        sign(signer_a, sent)


def test_decline_needs_a_reason_and_ends_the_agreement(signer_a, sent):
    with pytest.raises(ValidationError):
        services.agreement_decline(actor=signer_a, agreement=sent, reason="")
    services.agreement_decline(actor=signer_a, agreement=sent, reason="Our board wants changes to clause 7.")
    sent.refresh_from_db()
    assert sent.status == Agreement.Status.DECLINED
    assert sent.end_reason == "Our board wants changes to clause 7."
    with pytest.raises(ValidationError):
        sign(signer_a, sent)


def test_void_only_before_signature(legal, signer_a, sent):
    services.agreement_void(actor=legal, agreement=sent, reason="Wrong quota")
    sent.refresh_from_db()
    assert sent.status == Agreement.Status.VOIDED
    with pytest.raises(ValidationError, match="voided; it cannot be voided"):
        services.agreement_void(actor=legal, agreement=sent)


def test_terminate_needs_a_reason_and_revokes_grants(legal, active):
    with pytest.raises(ValidationError):
        services.agreement_terminate(actor=legal, agreement=active, reason="")
    services.agreement_terminate(actor=legal, agreement=active, reason="Breach of clause 5 (redistribution).")
    active.refresh_from_db()
    assert active.status == Agreement.Status.TERMINATED
    grants = AccessGrant.objects.filter(agreement=active)
    assert grants.count() == 2 and all(g.revoked_at and "Breach of clause 5" in g.revoke_reason for g in grants)


@pytest.mark.parametrize("persona", ["auditor", "signer_a", "researcher_a"])
def test_only_legal_terminates(request, active, persona):
    with pytest.raises(PermissionDenied):
        services.agreement_terminate(actor=request.getfixturevalue(persona), agreement=active, reason="Because.")


# --- Amendments ------------------------------------------------------------------------------------------


def test_an_activated_amendment_supersedes_the_original(legal, signer_a, active):
    large = Checkpoint.objects.get(slug="gpt2-large")
    amendment = services.agreement_amend(actor=legal, agreement=active, extra_checkpoints=[large])
    assert amendment.amends == active and amendment.status == Agreement.Status.DRAFT
    assert sorted(c.slug for c in amendment.checkpoints.all()) == ["gpt2", "gpt2-large", "gpt2-medium"]
    services.agreement_send(actor=legal, agreement=amendment)
    sign(signer_a, amendment)
    amendment.refresh_from_db()
    sign(legal, amendment)
    active.refresh_from_db()
    amendment.refresh_from_db()
    assert amendment.status == Agreement.Status.ACTIVE
    assert active.status == Agreement.Status.SUPERSEDED
    assert f"superseded by {amendment.reference}" in active.end_reason
    live = AccessGrant.objects.filter(organization=active.organization, revoked_at=None)
    assert sorted(g.checkpoint.slug for g in live) == ["gpt2", "gpt2-large", "gpt2-medium"]
    assert all(g.agreement == amendment for g in live)


def test_an_amendment_that_adds_only_keeps_the_original_active(legal, signer_a, active):
    large = Checkpoint.objects.get(slug="gpt2-large")
    amendment = draft_agreement(
        legal, active.organization, active.template_version, [large], amends=active, replaces_amended=False
    )
    services.agreement_send(actor=legal, agreement=amendment)
    sign(signer_a, amendment)
    amendment.refresh_from_db()
    sign(legal, amendment)
    active.refresh_from_db()
    assert active.status == Agreement.Status.ACTIVE
    live = AccessGrant.objects.filter(organization=active.organization, revoked_at=None)
    assert sorted(g.checkpoint.slug for g in live) == ["gpt2", "gpt2-large", "gpt2-medium"]


def test_only_active_agreements_can_be_amended(legal, sent):
    with pytest.raises(ValidationError, match="Only an active agreement"):
        services.agreement_amend(actor=legal, agreement=sent)


# --- Time ------------------------------------------------------------------------------------------------


def test_reminders_every_n_days_until_signed(settings, signer_a, sent, django_capture_on_commit_callbacks):
    settings.AGREEMENT_REMINDER_DAYS = 3
    with django_capture_on_commit_callbacks(execute=True):
        assert services.agreements_remind_due() == []
        with time_machine.travel(timezone.now() + timedelta(days=3, minutes=1)):
            assert services.agreements_remind_due() == [sent.reference]
            assert services.agreements_remind_due() == []  # not again the same day
        with time_machine.travel(timezone.now() + timedelta(days=6, minutes=2)):
            assert services.agreements_remind_due() == [sent.reference]
    reminders = [m for m in mail.outbox if "Reminder" in m.subject]
    assert len(reminders) == 2 and reminders[0].to == ["signer@partner-a.example"]
    sign(signer_a, sent)
    with time_machine.travel(timezone.now() + timedelta(days=9, minutes=3)):
        assert services.agreements_remind_due() == []


def test_an_unsigned_agreement_expires_after_the_signing_window(settings, sent):
    with time_machine.travel(timezone.now() + timedelta(days=settings.AGREEMENT_SIGNATURE_DAYS, minutes=1)):
        assert services.agreements_expire_due() == [sent.reference]
    sent.refresh_from_db()
    assert sent.status == Agreement.Status.EXPIRED
    assert services.agreements_remind_due(now=timezone.now() + timedelta(days=60)) == []


def test_an_active_agreement_expires_at_its_end_date_and_access_ends(active):
    with time_machine.travel(timezone.now() + timedelta(days=367)):
        assert services.agreements_expire_due() == [active.reference]
    active.refresh_from_db()
    assert active.status == Agreement.Status.EXPIRED
    assert not AccessGrant.objects.filter(agreement=active, revoked_at=None).exists()


# --- The record ------------------------------------------------------------------------------------------


def test_every_transition_writes_one_audit_event_and_the_chain_verifies(legal, active, capsys):
    services.agreement_terminate(actor=legal, agreement=active, reason="End of the research programme.")
    assert events_for(active) == [
        "agreement.created",
        "agreement.sent",
        "agreement.signed",
        "agreement.countersigned",
        "obligation.scheduled",
        "agreement.terminated",
    ]
    assert audit_chain_verify().ok
    call_command("audit_verify")
