"""Registry and access-request pages: wrong roles get 403, other organisations 404, bad input a message."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import Organization
from agreements import services as access
from agreements.models import AccessGrant, AccessRequest
from inference import services as jobs
from inference.models import GenerationJob
from models_registry import services
from models_registry.models import Checkpoint
from tests.builders import PURPOSE, make_job

pytestmark = pytest.mark.django_db

LAB_STAFF = ["lab_admin", "legal", "auditor"]
PARTNERS = ["admin_a", "signer_a", "researcher_a"]


def page(client, user, url: str, status: int = 200) -> str:
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == status, response.content.decode()[:2000]
    return response.content.decode()


@pytest.fixture
def registered(checkpoints, demo_folders) -> dict[str, Checkpoint]:
    """The four demo checkpoints registered, as after seed_demo."""
    for slug, (folder, info) in demo_folders.items():
        services.checkpoint_register_weights(
            actor=None, checkpoint=checkpoints[slug], folder=folder, info=info, is_demo=True
        )
    return {c.slug: c for c in Checkpoint.objects.all()}


@pytest.fixture
def pending(researcher_a, checkpoints) -> AccessRequest:
    return access.access_request_create(
        actor=researcher_a, checkpoints=[checkpoints["gpt2-large"]], purpose="Studying toxicity in long samples."
    )


# --- Registry ----------------------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_sign_in(client, checkpoints):
    for url in (reverse("checkpoint_list"), reverse("access_request_list"), reverse("access_request_create")):
        response = client.get(url)
        assert response.status_code == 302 and reverse("account_login") in response["Location"]


def test_the_registry_shows_sizes_hashes_demo_flags_and_who_holds_access(
    client, lab_admin, partner_a, registered, demo_folders, make_agreement
):
    make_agreement(partner_a, ["gpt2", "gpt2-medium"])
    html = page(client, lab_admin, reverse("checkpoint_list"))
    sha = demo_folders["gpt2"][1].sha256
    assert f'title="SHA-256 {sha}"' in html and f"{sha[:12]}…" in html
    assert html.count(">demo</span>") == 4
    assert "124,439,808 params" in html and "14 Feb 2019" in html
    assert html.count("Partner A</span>") == 2
    assert "Manage" in html


@pytest.mark.parametrize("persona", ["legal", "auditor"])
def test_other_lab_staff_read_the_registry_but_cannot_change_it(client, request, persona, registered):
    user = request.getfixturevalue(persona)
    html = page(client, user, reverse("checkpoint_detail", args=["gpt2"]))
    assert "Withdraw (kill switch)" not in html
    client.force_login(user)
    response = client.post(reverse("checkpoint_status", args=["gpt2"]), {"action": "withdraw", "reason": "x" * 20})
    assert response.status_code == 403
    assert Checkpoint.objects.get(slug="gpt2").status == Checkpoint.Status.AVAILABLE


@pytest.mark.parametrize("persona", PARTNERS)
def test_partners_cannot_open_or_change_registry_entries(client, request, persona, registered):
    user = request.getfixturevalue(persona)
    page(client, user, reverse("checkpoint_detail", args=["gpt2"]), status=403)
    response = client.post(reverse("checkpoint_status", args=["gpt2"]), {"action": "embargo", "reason": ""})
    assert response.status_code == 403
    assert Checkpoint.objects.get(slug="gpt2").status == Checkpoint.Status.AVAILABLE


def test_an_unknown_checkpoint_is_404(client, lab_admin, checkpoints):
    page(client, lab_admin, reverse("checkpoint_detail", args=["gpt3"]), status=404)


def test_the_kill_switch_needs_a_reason_next_to_the_field(client, lab_admin, partner_a, registered, make_agreement):
    make_agreement(partner_a, ["gpt2-xl"])
    client.force_login(lab_admin)
    url = reverse("checkpoint_status", args=["gpt2-xl"])
    response = client.post(url, {"action": "withdraw", "reason": ""})
    assert response.status_code == 400
    assert "Give a reason" in response.content.decode()
    assert AccessGrant.objects.get().revoked_at is None

    response = client.post(url, {"action": "withdraw", "reason": "Memorised personal data found."})
    assert response["Location"] == reverse("checkpoint_detail", args=["gpt2-xl"])
    assert AccessGrant.objects.get().revoke_reason == "checkpoint gpt2-xl withdrawn: Memorised personal data found."
    html = page(client, lab_admin, reverse("checkpoint_detail", args=["gpt2-xl"]))
    assert "revoked" in html and "Memorised personal data found." in html


def test_the_kill_switch_says_what_it_did_in_a_success_message(
    client, lab_admin, researcher_a, partner_a, registered, make_agreement
):
    grant = make_agreement(partner_a, ["gpt2-xl"]).grants.get()
    make_job(grant, researcher_a)
    client.force_login(lab_admin)
    response = client.post(
        reverse("checkpoint_status", args=["gpt2-xl"]),
        {"action": "withdraw", "reason": "Under investigation."},
        follow=True,
    )
    html = response.content.decode()
    assert (
        '<li class="success">gpt2-xl is withdrawn: 1 grant revoked, 1 queued job cancelled, '
        "0 running jobs asked to stop." in html
    )
    # The page's standing notice about the status is not an error, and a reason typed with its full stop keeps one.
    assert 'class="notice bad" role="status"' in html and "form-errors" not in html
    assert "is withdrawn: Under investigation. Its grants" in html
    assert ".." not in html.replace("...", "")


def test_grants_of_an_embargoed_checkpoint_read_paused_not_live(
    client, lab_admin, partner_a, registered, make_agreement
):
    make_agreement(partner_a, ["gpt2-xl"])
    client.force_login(lab_admin)
    client.post(reverse("checkpoint_status", args=["gpt2-xl"]), {"action": "embargo", "reason": "Red-team review."})
    html = page(client, lab_admin, reverse("checkpoint_detail", args=["gpt2-xl"]))
    assert '<span class="badge warn">paused</span>' in html and '<span class="badge ok">live</span>' not in html
    assert 'class="notice warning" role="status"' in html
    assert "is embargoed: Red-team review. Nobody" in html


def test_an_unknown_status_action_is_a_message_not_a_crash(client, lab_admin, registered):
    client.force_login(lab_admin)
    response = client.post(reverse("checkpoint_status", args=["gpt2"]), {"action": "explode"})
    assert response.status_code == 400
    assert "Unknown action." in response.content.decode()


def test_embargo_and_restore_from_the_page(client, lab_admin, registered):
    client.force_login(lab_admin)
    url = reverse("checkpoint_status", args=["gpt2-large"])
    client.post(url, {"action": "embargo", "reason": "Red-team review"})
    assert Checkpoint.objects.get(slug="gpt2-large").status == Checkpoint.Status.EMBARGOED
    response = client.post(url, {"action": "embargo"})
    assert response.status_code == 400 and "cannot be embargoed" in response.content.decode()
    client.post(url, {"action": "restore"})
    assert Checkpoint.objects.get(slug="gpt2-large").status == Checkpoint.Status.AVAILABLE


def test_a_partner_sees_what_it_can_use_until_when_with_todays_quota(
    client, researcher_a, partner_a, registered, make_agreement
):
    agreement = make_agreement(partner_a, ["gpt2", "gpt2-medium"], quota=50_000)
    grant = agreement.grants.get(checkpoint__slug="gpt2")
    make_job(grant, researcher_a, status=GenerationJob.Status.SUCCEEDED, tokens_generated=1_500)
    html = page(client, researcher_a, reverse("checkpoint_list"))
    assert html.count("available to you") == 2
    assert "48,500" in html and "of 50,000" in html
    assert f"{grant.ends_at:%-d %b %Y}" in html and agreement.reference in html
    assert "No active agreement grants gpt2-large.<" in html
    assert f"{reverse('access_request_create')}?checkpoint=gpt2-large" in html
    assert "SHA-256" not in html, "partners see access, not the lab's registry details"


def test_a_partner_sees_pending_and_unavailable_checkpoints_for_what_they_are(
    client, researcher_a, lab_admin, pending, registered
):
    jobs.checkpoint_withdraw(actor=lab_admin, checkpoint=registered["gpt2-xl"], reason="Unsafe outputs found.")
    html = page(client, researcher_a, reverse("checkpoint_list"))
    assert f'Request <a href="{reverse("access_request_detail", args=[pending.pk])}">#{pending.pk}</a>' in html
    assert "Checkpoint gpt2-xl is withdrawn: Unsafe outputs found.<" in html
    assert "?checkpoint=gpt2-xl" not in html and "?checkpoint=gpt2-large" not in html


# --- Access requests: partner side ------------------------------------------------------------------


@pytest.mark.parametrize("persona", LAB_STAFF)
def test_lab_staff_cannot_open_the_request_form(client, request, persona, checkpoints):
    user = request.getfixturevalue(persona)
    page(client, user, reverse("access_request_create"), status=403)
    response = client.post(reverse("access_request_create"), {"checkpoints": [checkpoints["gpt2"].pk]})
    assert response.status_code == 403


def test_a_researcher_requests_access_through_the_form(client, researcher_a, checkpoints):
    html = page(client, researcher_a, reverse("access_request_create") + "?checkpoint=gpt2-large")
    assert f'value="{checkpoints["gpt2-large"].pk}" checked' in html
    response = client.post(
        reverse("access_request_create"),
        {"checkpoints": [checkpoints["gpt2-large"].pk, checkpoints["gpt2-xl"].pk], "purpose": PURPOSE},
    )
    access_request = AccessRequest.objects.get()
    assert response["Location"] == reverse("access_request_detail", args=[access_request.pk])
    html = page(client, researcher_a, response["Location"])
    assert "GPT-2 Large (774M)" in html and PURPOSE in html and "Withdraw this request" in html


def test_the_request_form_does_not_offer_what_the_organisation_already_holds(
    client, researcher_a, partner_a, checkpoints, make_agreement
):
    agreement = make_agreement(partner_a, ["gpt2"])
    html = page(client, researcher_a, reverse("access_request_create") + "?checkpoint=gpt2")
    assert f'value="{checkpoints["gpt2"].pk}" disabled>' in html
    assert f'yours</span> <small class="muted">under {agreement.reference}' in html
    assert f'value="{checkpoints["gpt2-large"].pk}">' in html  # still offered
    response = client.post(
        reverse("access_request_create"), {"checkpoints": [checkpoints["gpt2"].pk], "purpose": PURPOSE}
    )
    assert response.status_code == 400
    assert f"gpt2 is already yours under {agreement.reference}." in response.content.decode()
    assert not AccessRequest.objects.exists()
    html = page(client, researcher_a, reverse("access_request_create"))
    assert "GPT-2 Small" in html


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"purpose": PURPOSE}, "Choose at least one checkpoint."),
        ({"checkpoints": ["gpt2"], "purpose": PURPOSE}, "Choose checkpoints from the list."),
        ({"checkpoints": ["999999"], "purpose": PURPOSE}, "Choose checkpoints from the list."),
        ({"checkpoints": ["LARGE"], "purpose": "Short."}, "at least 20 characters"),
        ({"checkpoints": ["LARGE"], "purpose": ""}, "at least 20 characters"),
        ({"checkpoints": ["LARGE"], "purpose": "z" * 4001}, "Keep the purpose to 4,000 characters (it has 4001)"),
    ],
)
def test_bad_requests_show_a_message_next_to_the_field(client, researcher_a, checkpoints, data, message):
    data = {k: [str(checkpoints["gpt2-large"].pk) if v == "LARGE" else v for v in vs] if k == "checkpoints" else vs
            for k, vs in data.items()}  # fmt: skip
    client.force_login(researcher_a)
    response = client.post(reverse("access_request_create"), data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not AccessRequest.objects.exists()


def test_requesting_an_embargoed_checkpoint_names_it_and_its_status(client, researcher_a, lab_admin, checkpoints):
    services.checkpoint_embargo(actor=lab_admin, checkpoint=checkpoints["gpt2-xl"])
    client.force_login(researcher_a)
    response = client.post(
        reverse("access_request_create"), {"checkpoints": [checkpoints["gpt2-xl"].pk], "purpose": PURPOSE}
    )
    assert response.status_code == 400
    assert "gpt2-xl is embargoed and cannot be requested." in response.content.decode()
    assert not AccessRequest.objects.exists()


def test_partners_list_only_their_own_requests(client, researcher_b, admin_a, pending, checkpoints):
    other = access.access_request_create(actor=researcher_b, checkpoints=[checkpoints["gpt2"]], purpose=PURPOSE)
    html = page(client, admin_a, reverse("access_request_list"))
    assert f"#{pending.pk}" in html and f"#{other.pk}<" not in html


def test_another_organisations_request_is_404(client, researcher_b, pending):
    page(client, researcher_b, reverse("access_request_detail", args=[pending.pk]), status=404)
    for name in ("access_request_withdraw", "access_request_approve", "access_request_reject"):
        assert client.post(reverse(name, args=[pending.pk]), {"reason": "no thanks at all"}).status_code == 404
    pending.refresh_from_db()
    assert pending.status == AccessRequest.Status.PENDING


def test_an_unknown_request_is_404(client, researcher_a, legal, checkpoints):
    page(client, researcher_a, reverse("access_request_detail", args=[424242]), status=404)
    client.force_login(legal)
    assert client.post(reverse("access_request_approve", args=[424242])).status_code == 404


def test_a_partner_withdraws_a_pending_request(client, signer_a, pending):
    client.force_login(signer_a)
    response = client.post(reverse("access_request_withdraw", args=[pending.pk]))
    assert response["Location"] == reverse("access_request_detail", args=[pending.pk])
    pending.refresh_from_db()
    assert pending.status == AccessRequest.Status.WITHDRAWN
    response = client.post(reverse("access_request_withdraw", args=[pending.pk]), follow=True)
    assert "already withdrawn" in response.content.decode()


@pytest.mark.parametrize("persona", PARTNERS)
def test_partners_cannot_decide_on_their_own_requests(client, request, persona, pending):
    client.force_login(request.getfixturevalue(persona))
    assert client.post(reverse("access_request_approve", args=[pending.pk])).status_code == 403
    response = client.post(reverse("access_request_reject", args=[pending.pk]), {"reason": "rejecting myself"})
    assert response.status_code == 403
    pending.refresh_from_db()
    assert pending.status == AccessRequest.Status.PENDING


# --- Access requests: review -------------------------------------------------------------------------


def test_legal_reviews_pending_requests_oldest_first_with_purpose_and_current_grants(
    client, legal, researcher_a, researcher_b, partner_a, checkpoints, make_agreement
):
    make_agreement(partner_a, ["gpt2", "gpt2-medium"])
    first = access.access_request_create(
        actor=researcher_a, checkpoints=[checkpoints["gpt2-large"]], purpose="First: detection of synthetic text."
    )
    second = access.access_request_create(
        actor=researcher_b, checkpoints=[checkpoints["gpt2"]], purpose="Second: bias in generated biographies."
    )
    html = page(client, legal, reverse("access_request_list"))
    assert html.index(f"#{first.pk} · Partner A") < html.index(f"#{second.pk} · Partner B")
    assert "First: detection of synthetic text." in html and "Second: bias in generated biographies." in html
    assert "<code>gpt2-medium</code> until" in html
    assert "None: this would be Partner B's first agreement." in html
    assert "Approve into a draft amendment" in html


def test_the_auditor_reads_the_queue_without_decision_buttons(client, auditor, pending):
    html = page(client, auditor, reverse("access_request_list"))
    assert f"#{pending.pk} · Partner A" in html
    assert "Approve into a draft amendment" not in html
    client.force_login(auditor)
    assert client.post(reverse("access_request_approve", args=[pending.pk])).status_code == 403
    assert client.post(reverse("access_request_reject", args=[pending.pk]), {"reason": "nope nope"}).status_code == 403


def test_a_rejection_without_a_reason_shows_a_message_by_that_request(client, legal, pending):
    client.force_login(legal)
    response = client.post(reverse("access_request_reject", args=[pending.pk]), {"reason": ""})
    assert response.status_code == 400
    assert "Give the partner a reason" in response.content.decode()
    response = client.post(reverse("access_request_reject", args=[pending.pk]), {"reason": "no"})
    assert response.status_code == 400
    assert "at least a few words" in response.content.decode()
    pending.refresh_from_db()
    assert pending.status == AccessRequest.Status.PENDING


def test_the_partner_sees_the_rejection_reason_and_may_apply_again(client, legal, researcher_a, pending):
    client.force_login(legal)
    response = client.post(
        reverse("access_request_reject", args=[pending.pk]), {"reason": "Please describe how samples are stored."}
    )
    assert response["Location"] == reverse("access_request_list")
    html = page(client, researcher_a, reverse("access_request_detail", args=[pending.pk]))
    assert "Please describe how samples are stored." in html and "Apply again" in html
    assert "Please describe how samples are stored." in page(client, researcher_a, reverse("access_request_list"))


def test_approving_opens_the_prefilled_draft_amendment(client, legal, partner_a, pending, make_agreement):
    active = make_agreement(partner_a, ["gpt2"])
    client.force_login(legal)
    response = client.post(reverse("access_request_approve", args=[pending.pk]))
    pending.refresh_from_db()
    assert pending.status == AccessRequest.Status.APPROVED
    assert pending.amendment.amends == active
    assert response["Location"] == reverse("agreement_detail", args=[pending.amendment.pk])


def test_an_amendment_from_a_request_is_for_the_requested_purpose_and_names_what_it_amends(
    client, legal, partner_a, signer_a, pending, make_agreement
):
    active = make_agreement(partner_a, ["gpt2"])
    assert pending.purpose != active.purpose
    client.force_login(legal)
    client.post(reverse("access_request_approve", args=[pending.pk]))
    pending.refresh_from_db()
    amendment = pending.amendment
    assert amendment.purpose == pending.purpose  # the request form says it becomes the agreement's purpose
    sent = access.agreement_send(actor=legal, agreement=amendment)
    assert f"This agreement amends model-sharing agreement {active.reference} of " in sent.document_html
    assert f"replaces it: once this agreement is in force, {active.reference} ends." in sent.document_html
    assert pending.purpose in sent.document_html


def test_approving_a_request_for_a_since_embargoed_checkpoint_says_why_not(
    client, legal, lab_admin, pending, checkpoints, published_template
):
    services.checkpoint_embargo(actor=lab_admin, checkpoint=checkpoints["gpt2-large"])
    client.force_login(legal)
    response = client.post(reverse("access_request_approve", args=[pending.pk]), follow=True)
    assert "gpt2-large is embargoed" in response.content.decode()
    pending.refresh_from_db()
    assert pending.status == AccessRequest.Status.PENDING


# --- Home pages ---------------------------------------------------------------------------------------


def test_the_partner_home_shows_usable_checkpoints_and_what_to_request(
    client, researcher_a, partner_a, registered, make_agreement
):
    agreement = make_agreement(partner_a, ["gpt2"], quota=20_000)
    html = page(client, researcher_a, reverse("home"))
    assert f"until {agreement.grants.get().ends_at:%-d %b %Y}" in html
    assert "20,000 of 20,000 tokens left today" in html
    assert f"{reverse('access_request_create')}?checkpoint=gpt2-xl" in html


def test_the_legal_home_counts_requests_waiting(client, legal, pending):
    html = page(client, legal, reverse("home"))
    assert "<strong>1</strong> waiting for review" in html and "Partner A" in html


def test_the_lab_admin_home_lists_the_registry(client, lab_admin, partner_a, registered, make_agreement):
    make_agreement(partner_a, ["gpt2"])
    html = page(client, lab_admin, reverse("home"))
    assert "<code>gpt2-xl</code>" in html and "(demo)" in html and "Partner A" in html


def test_a_deactivated_partner_cannot_request(client, researcher_a, partner_a, checkpoints):
    Organization.objects.filter(pk=partner_a.pk).update(active=False)
    client.force_login(researcher_a)
    response = client.post(
        reverse("access_request_create"), {"checkpoints": [checkpoints["gpt2"].pk], "purpose": PURPOSE}
    )
    assert response.status_code == 400
    assert "Partner A is deactivated" in response.content.decode()


def test_a_purpose_of_invisible_characters_is_refused_next_to_the_field(client, researcher_a, checkpoints):
    client.force_login(researcher_a)
    response = client.post(
        reverse("access_request_create"),
        {"checkpoints": [checkpoints["gpt2-large"].pk], "purpose": "Research" + "\u200b" * 30},
    )
    assert response.status_code == 400
    assert "Describe the research purpose in at least 20 characters. It has 8 visible characters." in (
        response.content.decode()
    )
    assert not AccessRequest.objects.exists()
