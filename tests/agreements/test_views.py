"""Agreement pages: wrong roles get 403, other organisations 404, bad input a message next to the field.

Fixtures (published_version, draft, sent, active) come from tests/agreements/conftest.py.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
import time_machine
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret, hotp_value
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from agreements import services
from agreements.models import Agreement, AgreementTemplate, Signature, TemplateVersion
from models_registry.models import Checkpoint
from tests.builders import OBLIGATION_TERMS_CLAUSE
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

PARTNER_B = ["admin_b", "signer_b", "researcher_b"]
PARTNER_A = ["admin_a", "signer_a", "researcher_a"]


def text_of(response) -> str:
    return response.content.decode()


def sign_in(client, user) -> None:
    """Sign in through allauth, so the session records how and when the user authenticated."""
    response = client.post(reverse("account_login"), {"login": user.email, "password": PASSWORD})
    assert response.status_code == 302, text_of(response)


def agreement_terms(partner, version, **overrides) -> dict:
    data = {
        "organization": partner.pk,
        "template_version": version.pk,
        "checkpoints": [Checkpoint.objects.get(slug="gpt2").pk, Checkpoint.objects.get(slug="gpt2-medium").pk],
        "effective_date": timezone.now().date().isoformat(),
        "term_months": "12",
        "daily_token_quota": "50,000",
        "purpose": "Measuring how well people can tell GPT-2 samples from news articles.",
    }
    data.update(overrides)
    return data


def sign_form(agreement: Agreement, **overrides) -> dict:
    data = {
        "consent": "on",
        "full_name": "Sofia Signer",
        "title": "Director of Research",
        "document_sha256": agreement.document_sha256,
        "time_zone": "Europe/Berlin",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


# --- Who may open what ----------------------------------------------------------------------------


def template_urls(version: TemplateVersion) -> list[tuple[str, str]]:
    template = version.template
    return [
        ("get", reverse("template_list")),
        ("get", reverse("template_create")),
        ("get", reverse("template_detail", args=[template.pk])),
        ("get", reverse("template_version", args=[version.pk])),
        ("get", reverse("template_diff", args=[template.pk])),
        ("post", reverse("template_preview")),
        ("post", reverse("template_new_draft", args=[template.pk])),
        ("post", reverse("template_version_publish", args=[version.pk])),
        ("post", reverse("template_version_retire", args=[version.pk])),
    ]


@pytest.mark.parametrize("persona", PARTNER_A)
def test_partners_are_refused_every_template_page(client, request, persona, published_version):
    client.force_login(request.getfixturevalue(persona))
    for method, url in template_urls(published_version):
        assert getattr(client, method)(url).status_code == 403, url
    published_version.refresh_from_db()
    assert published_version.status == TemplateVersion.Status.PUBLISHED


def test_auditor_reads_templates_but_changes_nothing(client, auditor, published_version):
    client.force_login(auditor)
    template = published_version.template
    assert "GPT-2 Model Sharing Agreement" in text_of(client.get(reverse("template_list")))
    assert client.get(reverse("template_detail", args=[template.pk])).status_code == 200
    page = text_of(client.get(reverse("template_version", args=[published_version.pk])))
    assert published_version.sha256 in page
    assert "<textarea" not in page
    assert "New draft" not in page and "Retire" not in page
    for method, url in template_urls(published_version):
        if method == "post" or url == reverse("template_create"):
            assert getattr(client, method)(url).status_code == 403, url
    assert client.post(reverse("template_version", args=[published_version.pk]), {"body": "# x"}).status_code == 403
    assert template.versions.count() == 1


@pytest.mark.parametrize("persona", PARTNER_B)
def test_partner_b_sees_none_of_partner_a_agreements_on_any_page(client, request, persona, legal, active, draft):
    # `active` is Partner A's agreement, signed both sides; the second is another sent one.
    other = services.agreement_amend(actor=legal, agreement=active)
    services.agreement_send(actor=legal, agreement=other)
    client.force_login(request.getfixturevalue(persona))

    for page in (reverse("home"), reverse("agreement_list"), reverse("agreement_list") + "?status=active"):
        response = client.get(page)
        assert response.status_code == 200
        assert active.reference not in text_of(response) and other.reference not in text_of(response)
        assert "Partner A" not in text_of(response)
    for agreement in (active, other):
        for name in ("agreement_detail", "agreement_sign", "agreement_decline", "agreement_edit"):
            assert client.get(reverse(name, args=[agreement.pk])).status_code == 404, name
        for name in ("agreement_sign", "agreement_decline", "agreement_send", "agreement_void"):
            assert client.post(reverse(name, args=[agreement.pk]), {"reason": "Not ours at all"}).status_code == 404
        for name in ("agreement_terminate", "agreement_amend"):
            assert client.post(reverse(name, args=[agreement.pk]), {"terminate-reason": "Not ours"}).status_code == 404
    active.refresh_from_db()
    other.refresh_from_db()
    assert active.status == Agreement.Status.ACTIVE
    assert other.status == Agreement.Status.OUT_FOR_SIGNATURE
    assert not other.first_viewed_at


@pytest.mark.parametrize("persona", PARTNER_A)
def test_partners_never_see_drafts(client, request, persona, draft):
    client.force_login(request.getfixturevalue(persona))
    assert draft.reference not in text_of(client.get(reverse("agreement_list")))
    assert client.get(reverse("agreement_detail", args=[draft.pk])).status_code == 404
    assert client.get(reverse("agreement_list") + "?status=draft").status_code == 400


@pytest.mark.parametrize("persona", ["auditor", *PARTNER_A])
def test_only_legal_and_lab_admins_create_agreements(client, request, persona, partner_a, published_version):
    client.force_login(request.getfixturevalue(persona))
    assert client.get(reverse("agreement_create")).status_code == 403
    response = client.post(reverse("agreement_create"), agreement_terms(partner_a, published_version))
    assert response.status_code == 403
    assert not Agreement.objects.exists()


@pytest.mark.parametrize("persona", ["auditor", *PARTNER_A])
def test_only_legal_and_lab_admins_send_void_terminate_and_amend(client, request, persona, legal, active):
    sent = services.agreement_send(actor=legal, agreement=services.agreement_amend(actor=legal, agreement=active))
    client.force_login(request.getfixturevalue(persona))
    page = text_of(client.get(reverse("agreement_detail", args=[active.pk])))
    assert reverse("agreement_terminate", args=[active.pk]) not in page
    assert reverse("agreement_amend", args=[active.pk]) not in page
    assert (
        client.post(reverse("agreement_terminate", args=[active.pk]), {"terminate-reason": "Because."}).status_code
        == 403
    )
    assert client.post(reverse("agreement_amend", args=[active.pk])).status_code == 403
    assert client.post(reverse("agreement_void", args=[sent.pk])).status_code == 403
    assert client.get(reverse("agreement_edit", args=[active.pk])).status_code == 403
    active.refresh_from_db()
    sent.refresh_from_db()
    assert active.status == Agreement.Status.ACTIVE and sent.status == Agreement.Status.OUT_FOR_SIGNATURE
    assert Agreement.objects.count() == 2


@pytest.mark.parametrize("persona", ["auditor", "admin_a", "researcher_a"])
def test_only_a_signatory_signs_and_declines(client, request, persona, sent):
    client.force_login(request.getfixturevalue(persona))
    assert client.get(reverse("agreement_sign", args=[sent.pk])).status_code == 403
    assert client.post(reverse("agreement_sign", args=[sent.pk]), sign_form(sent)).status_code == 403
    assert client.get(reverse("agreement_decline", args=[sent.pk])).status_code == 403
    assert client.post(reverse("agreement_decline", args=[sent.pk]), {"reason": "We do not agree."}).status_code == 403
    sent.refresh_from_db()
    assert sent.status == Agreement.Status.OUT_FOR_SIGNATURE


def test_a_partner_researcher_reads_the_sent_agreement(client, researcher_a, sent):
    client.force_login(researcher_a)
    page = text_of(client.get(reverse("agreement_detail", args=[sent.pk])))
    assert sent.document_sha256 in page
    assert "Review and sign" not in page and "Send for signature" not in page
    sent.refresh_from_db()
    assert sent.first_viewed_at is not None  # anyone at the partner opening it counts as "viewed"


def test_missing_objects_are_404_not_500(client, legal):
    client.force_login(legal)
    for name in ("agreement_detail", "agreement_sign", "agreement_edit", "template_detail", "template_version"):
        assert client.get(reverse(name, args=[999_999])).status_code == 404
    assert client.get("/agreements/not-a-number/").status_code == 404


def test_empty_or_malformed_posts_are_messages_not_errors(client, legal, signer_a, sent, published_version):
    client.force_login(legal)
    response = client.post(reverse("template_create"), {})
    assert response.status_code == 400 and "Give the template a name." in text_of(response)
    draft = services.template_version_new_draft(actor=legal, template=published_version.template)
    response = client.post(reverse("template_version", args=[draft.pk]), {"body": "# Hi\x00"})
    assert response.status_code == 400 and "Null characters are not allowed" in text_of(response)
    assert client.post(reverse("template_preview"), {"body": "\x00"}).status_code == 200
    assert client.post(reverse("agreement_create"), {}).status_code == 400

    client.force_login(signer_a)
    response = client.post(reverse("agreement_decline", args=[sent.pk]), {})
    assert response.status_code == 400 and "Give a reason" in text_of(response)
    response = client.post(reverse("agreement_sign", args=[sent.pk]), sign_form(sent, document_sha256="a\x00b"))
    assert response.status_code == 400 and "Reload it" in text_of(response)
    sent.refresh_from_db()
    assert sent.status == Agreement.Status.OUT_FOR_SIGNATURE


def test_anonymous_visitors_are_sent_to_sign_in(client, sent):
    for url in (reverse("agreement_list"), reverse("agreement_detail", args=[sent.pk]), reverse("template_list")):
        response = client.get(url)
        assert response.status_code == 302 and reverse("account_login") in response["Location"]


# --- Templates ------------------------------------------------------------------------------------


def test_new_template_starts_from_the_standard_agreement(client, legal):
    client.force_login(legal)
    page = text_of(client.get(reverse("template_create")))
    assert "GPT-2 Model Sharing Agreement" in page
    assert 'hx-post="/templates/preview/"' in page and 'hx-trigger="input changed delay:400ms"' in page
    assert "The partner organisation&#x27;s full legal name" in page  # placeholders listed with their meaning
    assert '<article class="agreement-document">' in page  # the first preview is there before any typing


def test_legal_creates_a_template_and_the_browser_line_endings_do_not_change_its_hash(client, legal):
    client.force_login(legal)
    body = "# Agreement\r\n\r\nBetween {{ lab.legal_name }} and {{ organization.legal_name }}.\r\n"
    response = client.post(reverse("template_create"), {"name": "Short form", "description": "", "body": body})
    version = TemplateVersion.objects.get(template__name="Short form")
    assert response["Location"] == reverse("template_version", args=[version.pk])
    assert version.body == body.replace("\r\n", "\n")


def test_a_duplicate_or_empty_template_is_refused_next_to_the_field(client, legal, published_version):
    client.force_login(legal)
    response = client.post(reverse("template_create"), {"name": published_version.template.name, "body": "# x"})
    assert response.status_code == 400
    assert "already exists" in text_of(response)
    response = client.post(reverse("template_create"), {"name": "Empty one", "body": "  "})
    assert response.status_code == 400 and "The template is empty." in text_of(response)
    assert AgreementTemplate.objects.count() == 1


def test_preview_renders_with_sample_values_and_reports_problems(client, legal):
    client.force_login(legal)
    body = "# Between {{ organization.legal_name }}\n\nPassword: {{ user.password }}\n"
    response = client.post(reverse("template_preview"), {"body": body}, HTTP_HX_REQUEST="true")
    html = text_of(response)
    assert response.status_code == 200
    assert "<h1>Between Example Research Institute Ltd</h1>" in html
    assert "Line 3" in html and "unknown placeholder {{ user.password }}" in html
    assert '<span class="placeholder-invalid">{{ user.password }}</span>' in html
    assert "<html" not in html  # a fragment for htmx to swap in, not a page

    clean = text_of(client.post(reverse("template_preview"), {"body": "Hello {{ purpose }}"}))
    assert "No problems" in clean and "Studying the detectability" in clean


def test_preview_shows_raw_html_as_text(client, legal):
    client.force_login(legal)
    body = "<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n[x](javascript:alert(1))\n"
    html = text_of(client.post(reverse("template_preview"), {"body": body}))
    assert "<script>alert" not in html and "<img" not in html and 'href="javascript' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


INJECTIONS = [
    ("{{ settings.SECRET_KEY }}", "unknown placeholder {{ settings.SECRET_KEY }}"),
    ("{% load static %}", "template tags are not allowed"),
    ('{% include "base.html" %}', "template tags are not allowed"),
    ("{{ user.password }}", "unknown placeholder {{ user.password }}"),
    ("{{ organization.__class__.__mro__ }}", "may not contain &#x27;__&#x27;"),
    ('{{ organization.name|attr:"x" }}', "filters are not allowed"),
]


@pytest.mark.parametrize(("injection", "says"), INJECTIONS)
def test_template_injection_is_refused_at_save_with_its_line_number(client, legal, published_version, injection, says):
    draft = services.template_version_new_draft(actor=legal, template=published_version.template)
    client.force_login(legal)
    body = f"# Title\n\nFine {{{{ purpose }}}}.\n\nSigned: {injection}\n"
    response = client.post(reverse("template_version", args=[draft.pk]), {"body": body})
    html = text_of(response)
    assert response.status_code == 400
    errors = re.search(r'<div id="body-errors">(.*?)</div>', html, re.S)
    assert errors, "the problem is shown next to the text field"
    assert "Line 5:" in errors.group(1) and says in errors.group(1)
    draft.refresh_from_db()
    assert injection not in draft.body
    # The refused text stays on screen to be fixed, and publishing waits until it is saved.
    assert "Signed: " in html and "data-unsaved-on-load" in html


@pytest.mark.parametrize(
    "injection", ["<script>alert(1)</script>", "[click](javascript:alert(1))", "<img src=x onerror=alert(1)>"]
)
def test_raw_html_in_a_template_never_reaches_the_document(client, legal, partner_a, signer_a, injection):
    client.force_login(legal)
    client.post(
        reverse("template_create"),
        {"name": "T", "body": f"# T\n\n{injection}\n\n{{{{ signature.partner }}}}\n{OBLIGATION_TERMS_CLAUSE}"},
    )
    version = TemplateVersion.objects.get(template__name="T")
    client.post(reverse("template_version_publish", args=[version.pk]))
    client.post(reverse("agreement_create"), agreement_terms(partner_a, version))
    agreement = Agreement.objects.get()
    client.post(reverse("agreement_send", args=[agreement.pk]))
    agreement.refresh_from_db()
    html = text_of(client.get(reverse("agreement_detail", args=[agreement.pk])))
    assert agreement.status == Agreement.Status.OUT_FOR_SIGNATURE
    for document in (agreement.document_html, html):
        assert "<script>alert" not in document and "<img" not in document
        assert not re.search(r"href=\"javascript", document, re.I)


def test_a_legal_name_with_markup_appears_escaped(client, legal, partner_a, signer_a, published_version):
    partner_a.legal_name = "ACME <b>&"
    partner_a.save()
    client.force_login(legal)
    client.post(reverse("agreement_create"), agreement_terms(partner_a, published_version))
    html = text_of(client.get(reverse("agreement_detail", args=[Agreement.objects.get().pk])))
    assert "ACME &lt;b&gt;&amp;" in html and "ACME <b>" not in html


def test_editing_saving_and_publishing_a_draft(client, legal, published_version):
    client.force_login(legal)
    response = client.post(reverse("template_new_draft", args=[published_version.template.pk]))
    draft = TemplateVersion.objects.get(template=published_version.template, number=2)
    assert response["Location"] == reverse("template_version", args=[draft.pk])
    editor = text_of(client.get(response["Location"]))
    assert "<textarea" in editor and "Publish v2" in editor

    body = draft.body.replace("## 1. Definitions", "## 1. Definitions and interpretation")
    assert client.post(reverse("template_version", args=[draft.pk]), {"body": body}).status_code == 302
    client.post(reverse("template_version_publish", args=[draft.pk]))
    draft.refresh_from_db()
    assert draft.status == TemplateVersion.Status.PUBLISHED and len(draft.sha256) == 64
    page = text_of(client.get(reverse("template_version", args=[draft.pk]), follow=True))
    assert draft.sha256 in page and "<textarea" not in page

    # A published version never changes, even when its page is posted to.
    response = client.post(reverse("template_version", args=[draft.pk]), {"body": "# Changed"}, follow=True)
    assert "can no longer change" in text_of(response)
    draft.refresh_from_db()
    assert draft.body == body


def test_publishing_twice_or_retiring_a_draft_is_a_message(client, legal, published_version):
    client.force_login(legal)
    response = client.post(reverse("template_version_publish", args=[published_version.pk]), follow=True)
    assert "already published" in text_of(response)
    draft = services.template_version_new_draft(actor=legal, template=published_version.template)
    response = client.post(reverse("template_version_retire", args=[draft.pk]), follow=True)
    assert "Only a published version can be retired" in text_of(response)


def test_retired_versions_are_not_offered_for_new_agreements(client, legal, partner_a, published_version):
    client.force_login(legal)
    client.post(reverse("template_version_retire", args=[published_version.pk]))
    published_version.refresh_from_db()
    assert published_version.status == TemplateVersion.Status.RETIRED
    response = client.post(reverse("agreement_create"), agreement_terms(partner_a, published_version))
    assert response.status_code == 400
    assert "There is no published template version to draft from" in text_of(response)
    assert not Agreement.objects.exists()


def test_a_diff_shows_the_changes_first_and_counts_only_lines_with_text(client, legal):
    clauses = "".join(f"**{n}.** Clause {n} of the agreement.\n\n" for n in range(1, 61))
    v1 = services.template_version_publish(
        actor=legal,
        version=services.template_create(
            actor=legal, name="Long", body=f"# Long\n\n{clauses}{OBLIGATION_TERMS_CLAUSE}"
        ),
    )
    v2 = services.template_version_new_draft(actor=legal, template=v1.template)
    changed = v1.body.replace("Clause 50 of", "Clause fifty of") + "\n\n\nA closing line.\n"
    services.template_version_save(actor=legal, version=v2, body=changed)
    client.force_login(legal)
    url = reverse("template_diff", args=[v1.template.pk])
    html = text_of(client.get(url, {"left": v1.pk, "right": v2.pk}))
    assert "2 changed lines" in html  # the edited clause and the closing line; added blank lines do not count
    assert html.index("Clause 49 of") < html.index('id="change-1"') < html.index("Clause 51 of")  # some context
    assert "Clause 10 of" not in html and "Clause 45 of" not in html  # far from any change: folded away
    assert re.search(r"⋯ \d+ unchanged lines ⋯", html)
    assert '<a href="#change-1">Jump to the first change</a>' in html
    whole = text_of(client.get(url, {"left": v1.pk, "right": v2.pk, "context": "all"}))
    assert "Clause 10 of" in whole and "unchanged lines ⋯" not in whole and "Show only the changes" in whole


def test_two_versions_diff_side_by_side(client, legal, published_version):
    draft = services.template_version_new_draft(actor=legal, template=published_version.template)
    services.template_version_save(
        actor=legal, version=draft, body=draft.body.replace("non-exclusive", "exclusive") + "\nA new closing line.\n"
    )
    client.force_login(legal)
    url = reverse("template_diff", args=[published_version.template.pk])
    html = text_of(client.get(url, {"left": published_version.pk, "right": draft.pk}))
    assert '<tr class="diff-replace" id="change-1">' in html and '<tr class="diff-insert">' in html
    assert "<del>non-</del>" in html
    assert "<ins>A new closing line.</ins>" in html
    # Each version's page links to the comparison with the older version on the left.
    for version in (published_version, draft):
        page = text_of(client.get(reverse("template_version", args=[version.pk])))
        assert f"{url}?left={published_version.pk}&amp;right={draft.pk}" in page
    # Nonsense choices are a message, not an error page.
    response = client.get(url, {"left": "abc", "right": 999_999})
    assert response.status_code == 400 and "Choose one of this template" in text_of(response)


# --- Agreements: drafting -------------------------------------------------------------------------


def test_legal_creates_a_draft_and_previews_what_will_be_signed(client, legal, partner_a, published_version):
    client.force_login(legal)
    response = client.post(reverse("agreement_create"), agreement_terms(partner_a, published_version))
    agreement = Agreement.objects.get()
    assert response["Location"] == reverse("agreement_detail", args=[agreement.pk])
    assert agreement.daily_token_quota == 50_000
    assert sorted(c.slug for c in agreement.checkpoints.all()) == ["gpt2", "gpt2-medium"]
    page = text_of(client.get(response["Location"]))
    assert "Preview of what will be sent" in page and "Partner A Research Institute" in page
    assert "Send for signature" in page and "Edit draft" in page


def test_a_draft_warns_about_values_the_document_would_show_blank(client, legal, draft):
    draft.organization.address = ""
    draft.organization.save()
    client.force_login(legal)
    page = text_of(client.get(reverse("agreement_detail", args=[draft.pk])))
    assert "no value yet for <code>organization.address</code>" in page
    draft.organization.address = "1 Research Park"
    draft.organization.save()
    assert "no value yet" not in text_of(client.get(reverse("agreement_detail", args=[draft.pk])))


def test_the_agreement_form_lists_checkpoints_with_size_and_status(client, legal, published_version):
    Checkpoint.objects.filter(slug="gpt2-xl").update(status=Checkpoint.Status.EMBARGOED)
    client.force_login(legal)
    page = text_of(client.get(reverse("agreement_create")))
    assert "GPT-2 Medium" in page and "355M parameters" in page
    assert "embargoed" in page
    assert 'type="date"' in page


def test_an_older_published_version_is_marked_older_in_the_agreement_form(client, legal, published_version):
    v2 = services.template_version_new_draft(actor=legal, template=published_version.template)
    services.template_version_save(actor=legal, version=v2, body=published_version.body + "\nA new clause.\n")
    services.template_version_publish(actor=legal, version=v2)
    client.force_login(legal)
    page = text_of(client.get(reverse("agreement_create")))
    name = published_version.template.name
    assert f"{name} · v1 (older: v2 is the latest)</option>" in page
    assert f"{name} · v2 (latest)</option>" in page


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"daily_token_quota": "lots"}, "daily_token_quota", "Enter a whole number"),
        ({"daily_token_quota": "0"}, "daily_token_quota", "daily token quota is a whole number from 1"),
        ({"term_months": "12.5"}, "term_months", "Enter a whole number"),
        ({"term_months": "500"}, "term_months", "The term is a whole number of months"),
        ({"effective_date": "2001-01-01"}, "effective_date", "cannot be in the past"),
        ({"effective_date": "31/02/2030"}, "effective_date", "Enter a date"),
        ({"effective_date": ""}, "effective_date", "Enter the date the agreement takes effect"),
        ({"checkpoints": []}, "checkpoints", "Choose at least one checkpoint"),
        ({"checkpoints": ["x"]}, "checkpoints", "Choose checkpoints from the list"),
        ({"checkpoints": ["999999"]}, "checkpoints", "Choose checkpoints from the list"),
        ({"organization": "abc"}, "organization", "Choose a partner organisation"),
        ({"template_version": "999999"}, "template_version", "Choose a published template version"),
        ({"purpose": "research"}, "purpose", "at least 20 characters"),
    ],
)
def test_bad_agreement_input_is_shown_next_to_the_field(
    client, legal, partner_a, published_version, overrides, field, message
):
    client.force_login(legal)
    response = client.post(reverse("agreement_create"), agreement_terms(partner_a, published_version, **overrides))
    assert response.status_code == 400
    assert message in text_of(response)
    assert not Agreement.objects.exists()


def test_a_draft_version_or_the_lab_itself_cannot_be_chosen(client, legal, lab, published_version):
    draft = services.template_version_new_draft(actor=legal, template=published_version.template)
    client.force_login(legal)
    response = client.post(reverse("agreement_create"), agreement_terms(lab, draft))
    assert response.status_code == 400
    assert "Choose a published template version" in text_of(response)
    assert "Choose a partner organisation" in text_of(response)


def test_withdrawn_checkpoints_are_refused_by_name(client, legal, partner_a, published_version):
    Checkpoint.objects.filter(slug="gpt2-medium").update(status=Checkpoint.Status.WITHDRAWN)
    client.force_login(legal)
    response = client.post(reverse("agreement_create"), agreement_terms(partner_a, published_version))
    assert response.status_code == 400
    assert "gpt2-medium (withdrawn)" in text_of(response)


def test_a_draft_is_edited_but_a_sent_agreement_is_not(client, legal, draft):
    client.force_login(legal)
    data = agreement_terms(draft.organization, draft.template_version, term_months="24")
    del data["organization"]
    assert client.post(reverse("agreement_edit", args=[draft.pk]), data).status_code == 302
    draft.refresh_from_db()
    assert draft.term_months == 24

    services.agreement_send(actor=legal, agreement=draft)
    response = client.post(reverse("agreement_edit", args=[draft.pk]), data, follow=True)
    assert "can no longer change" in text_of(response)


def test_sending_without_a_signatory_is_a_message(client, legal, partner_b, published_version, small_checkpoints):
    client.force_login(legal)
    client.post(reverse("agreement_create"), agreement_terms(partner_b, published_version))
    agreement = Agreement.objects.get()
    response = client.post(reverse("agreement_send", args=[agreement.pk]), follow=True)
    assert "has no active signatory yet" in text_of(response)
    agreement.refresh_from_db()
    assert agreement.status == Agreement.Status.DRAFT


def test_sending_freezes_the_document_and_shows_its_hash(client, legal, draft, mailoutbox):
    client.force_login(legal)
    page = text_of(client.post(reverse("agreement_send", args=[draft.pk]), follow=True))
    draft.refresh_from_db()
    assert draft.status == Agreement.Status.OUT_FOR_SIGNATURE
    assert draft.document_sha256 in page
    assert "Void" in page and "Send for signature" not in page


def test_agreement_list_filters_by_organisation_and_status(client, legal, partner_b, sent, published_version):
    client.force_login(legal)
    url = reverse("agreement_list")
    assert sent.reference in text_of(client.get(url, {"organization": sent.organization_id}))
    assert sent.reference not in text_of(client.get(url, {"organization": partner_b.pk}))
    assert sent.reference in text_of(client.get(url, {"status": "out_for_signature"}))
    assert sent.reference not in text_of(client.get(url, {"status": "active"}))
    response = client.get(url, {"organization": "x", "status": "nonsense", "page": "zz"})
    assert response.status_code == 400 and "Choose a status from the list" in text_of(response)


# --- Ending and amending --------------------------------------------------------------------------


def test_terminating_needs_a_reason_shown_next_to_the_field(client, legal, active):
    client.force_login(legal)
    response = client.post(reverse("agreement_terminate", args=[active.pk]), {"terminate-reason": ""})
    assert response.status_code == 400
    assert "Give a reason" in text_of(response)
    active.refresh_from_db()
    assert active.status == Agreement.Status.ACTIVE

    client.post(reverse("agreement_terminate", args=[active.pk]), {"terminate-reason": "Breach of clause 4."})
    active.refresh_from_db()
    assert active.status == Agreement.Status.TERMINATED and active.end_reason == "Breach of clause 4."


def test_void_takes_an_optional_reason_and_refuses_an_active_agreement(client, legal, sent):
    client.force_login(legal)
    client.post(reverse("agreement_void", args=[sent.pk]), {"void-reason": ""})
    sent.refresh_from_db()
    assert sent.status == Agreement.Status.VOIDED
    response = client.post(reverse("agreement_void", args=[sent.pk]), follow=True)
    assert "cannot be voided" in text_of(response)


def test_amending_an_active_agreement_opens_the_amendment_draft(client, legal, active):
    client.force_login(legal)
    response = client.post(reverse("agreement_amend", args=[active.pk]))
    amendment = Agreement.objects.get(amends=active)
    assert response["Location"] == reverse("agreement_edit", args=[amendment.pk])
    page = text_of(client.get(response["Location"]))
    assert "replaces the agreement it amends" in page and active.reference in page


def test_a_draft_cannot_be_amended(client, legal, draft):
    client.force_login(legal)
    response = client.post(reverse("agreement_amend", args=[draft.pk]), follow=True)
    assert "Only an active agreement can be amended" in text_of(response)


# --- Signing --------------------------------------------------------------------------------------


def test_signatory_sees_the_agreement_waiting_and_opening_it_is_recorded(client, signer_a, sent):
    client.force_login(signer_a)
    home = text_of(client.get(reverse("home")))
    assert "Waiting for your signature" in home and sent.reference in home
    page = text_of(client.get(reverse("agreement_detail", args=[sent.pk])))
    assert "Review and sign" in page
    sent.refresh_from_db()
    assert sent.first_viewed_at is not None


def test_signing_page_shows_document_hash_consent_and_asks_to_reauthenticate_when_stale(client, signer_a, sent):
    sign_in(client, signer_a)
    url = reverse("agreement_sign", args=[sent.pk])
    page = text_of(client.get(url))
    assert sent.document_sha256 in page and escape(services.CONSENT_TEXT) in page
    assert f'name="document_sha256" value="{sent.document_sha256}"' in page
    assert "js/sign.js" in page and 'data-time-zone-field="id_time_zone"' in page  # the browser fills it in
    assert "Confirmed" in page  # signed in a moment ago

    with time_machine.travel(timezone.now() + timedelta(minutes=6)):
        page = text_of(client.get(url))
        assert f"{reverse('account_reauthenticate')}?next=%2Fagreements%2F{sent.pk}%2Fsign%2F" in page
        response = client.post(url, sign_form(sent))
        assert response.status_code == 400
        assert "Confirm your identity again" in text_of(response)
    assert not Signature.objects.exists()


def test_signatory_signs_after_reauthenticating_and_legal_countersigns(client, signer_a, legal, sent):
    sign_in(client, signer_a)
    url = reverse("agreement_sign", args=[sent.pk])
    with time_machine.travel(timezone.now() + timedelta(minutes=10)):
        reauth = client.post(f"{reverse('account_reauthenticate')}?next={url}", {"password": PASSWORD})
        assert reauth["Location"] == url
        response = client.post(url, sign_form(sent), HTTP_USER_AGENT="Mozilla/5.0 (test)", REMOTE_ADDR="198.51.100.4")
        assert response.status_code == 302, text_of(response)
    signature = Signature.objects.get()
    assert signature.side == Signature.Side.PARTNER and signature.reauth_method == "password"
    assert signature.document_sha256 == sent.document_sha256
    assert signature.time_zone == "Europe/Berlin" and signature.ip == "198.51.100.4"
    assert signature.user_agent == "Mozilla/5.0 (test)"

    client.post(reverse("account_logout"))
    sign_in(client, legal)
    assert sent.reference in text_of(client.get(reverse("home")))  # waiting for countersignature
    client.post(url, sign_form(sent, full_name="Lena Legal", title="General Counsel"))
    sent.refresh_from_db()
    assert sent.status == Agreement.Status.ACTIVE
    page = text_of(client.get(reverse("agreement_detail", args=[sent.pk])))
    assert "Lena Legal" in page and "Sofia Signer" in page and ">Active<" in page


def test_a_totp_user_confirms_with_an_authenticator_code_and_it_is_recorded(client, signer_a, sent):
    secret = generate_totp_secret()
    TOTP.activate(signer_a, secret)
    client.post(reverse("account_login"), {"login": signer_a.email, "password": PASSWORD})
    client.post(reverse("mfa_authenticate"), {"code": format(hotp_value(secret, int(time.time()) // 30), "06d")})
    url = reverse("agreement_sign", args=[sent.pk])
    with time_machine.travel(timezone.now() + timedelta(minutes=10)):
        page = text_of(client.get(url))
        assert f"{reverse('mfa_reauthenticate')}?next=" in page and "Use authenticator app or code" in page
        assert f"{reverse('account_reauthenticate')}?next=" in page
        code = format(hotp_value(secret, int(time.time()) // 30), "06d")
        assert client.post(f"{reverse('mfa_reauthenticate')}?next={url}", {"code": code})["Location"] == url
        assert "authenticator code" in text_of(client.get(url))
        assert client.post(url, sign_form(sent)).status_code == 302
    assert Signature.objects.get().reauth_method == "totp"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"document_sha256": "0" * 64}, "The document changed since you opened it"),
        ({"document_sha256": None}, "The document changed since you opened it"),
        ({"consent": None}, "Tick the box to agree to sign electronically"),
        ({"full_name": "  "}, "Type your full name"),
        ({"title": ""}, "Enter your title"),
    ],
)
def test_a_refused_signature_is_a_message_and_saves_nothing(client, signer_a, sent, overrides, message):
    sign_in(client, signer_a)
    response = client.post(reverse("agreement_sign", args=[sent.pk]), sign_form(sent, **overrides))
    assert response.status_code == 400
    assert message in text_of(response)
    # The retry signs the document on screen: the hidden field carries its hash again.
    assert f'name="document_sha256" value="{sent.document_sha256}"' in text_of(response)
    sent.refresh_from_db()
    assert sent.status == Agreement.Status.OUT_FOR_SIGNATURE and not Signature.objects.exists()


def test_signing_page_is_only_for_what_is_waiting_for_you(client, legal, signer_a, sent, active):
    client.force_login(legal)
    response = client.get(reverse("agreement_sign", args=[sent.pk]), follow=True)
    assert "not waiting for your countersignature" in text_of(response)
    client.force_login(signer_a)
    response = client.post(reverse("agreement_sign", args=[active.pk]), sign_form(active), follow=True)
    assert "not waiting for your signature" in text_of(response)
    assert Signature.objects.filter(agreement=active).count() == 2


def test_declining_needs_a_reason(client, signer_a, sent):
    client.force_login(signer_a)
    url = reverse("agreement_decline", args=[sent.pk])
    response = client.post(url, {"reason": ""})
    assert response.status_code == 400 and "Give a reason" in text_of(response)
    sent.refresh_from_db()
    assert sent.status == Agreement.Status.OUT_FOR_SIGNATURE

    client.post(url, {"reason": "The purpose is too narrow for our study."})
    sent.refresh_from_db()
    assert sent.status == Agreement.Status.DECLINED
    assert "too narrow" in text_of(client.get(reverse("agreement_detail", args=[sent.pk])))


# --- Home pages -----------------------------------------------------------------------------------


def test_legal_home_shows_templates_drafts_and_countersignatures(client, legal, signer_a, draft, published_version):
    client.force_login(legal)
    home = text_of(client.get(reverse("home")))
    assert "1 template" in home and draft.reference in home and "Countersign" not in home


def test_partner_home_lists_their_agreements(client, researcher_a, active):
    client.force_login(researcher_a)
    home = text_of(client.get(reverse("home")))
    assert active.reference in home and ">Active<" in home


def test_a_purpose_of_invisible_characters_is_refused_next_to_the_field(client, legal, partner_a, published_version):
    client.force_login(legal)
    terms = agreement_terms(partner_a, published_version, purpose="\u200b" * 25 + "Study")
    response = client.post(reverse("agreement_create"), terms)
    assert response.status_code == 400
    assert "Describe the research purpose in at least 20 characters. It has 5 visible characters." in text_of(response)
    assert not Agreement.objects.exists()
