"""A template version's obligation terms: legal edits them beside the text, each within its range; publishing
needs the text to state all four; published versions show them read-only and the comparison lists changes."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from agreements import services
from agreements.models import TemplateVersion
from agreements.rendering import OBLIGATION_PLACEHOLDERS
from audit.models import AuditEvent
from tests.builders import DEFAULT_TEMPLATE, OBLIGATION_TERMS_CLAUSE

pytestmark = pytest.mark.django_db

TERMS = {
    "findings_report_days": "60",
    "incident_report_hours": "48",
    "final_report_days": "45",
    "prepublication_review_days": "21",
}


def text_of(response) -> str:
    return response.content.decode()


def terms(**overrides) -> services.ObligationTerms:
    values = {"findings_report_days": 90, "incident_report_hours": 72, "final_report_days": 30}
    values["prepublication_review_days"] = 30
    values.update(overrides)
    return services.ObligationTerms(**values)


@pytest.fixture
def draft(legal, published_version) -> TemplateVersion:
    return services.template_version_new_draft(actor=legal, template=published_version.template)


# --- Services -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("findings_report_days", 0, "Enter a whole number of days from 1 to 365 for the findings report"),
        ("findings_report_days", 366, "from 1 to 365"),
        ("incident_report_hours", 721, "Enter a whole number of hours from 1 to 720 for the incident report window."),
        ("final_report_days", None, "Enter a whole number of days from 1 to 365 for the final report"),
        ("prepublication_review_days", -5, "days from 1 to 365 for the pre-publication review."),
    ],
)
def test_a_term_out_of_range_is_refused_naming_the_field(legal, draft, field, value, message):
    with pytest.raises(ValidationError) as excinfo:
        services.template_version_save(actor=legal, version=draft, body=draft.body, terms=terms(**{field: value}))
    assert message in excinfo.value.message_dict[field][0]
    draft.refresh_from_db()
    assert draft.obligation_terms == terms().as_dict()
    assert not AuditEvent.objects.filter(action="template.version_saved").exists()


def test_terms_are_saved_and_audited_and_carried_to_the_next_draft(legal, draft):
    services.template_version_save(actor=legal, version=draft, body=draft.body, terms=terms(findings_report_days=60))
    draft.refresh_from_db()
    assert draft.findings_report_days == 60
    (event,) = AuditEvent.objects.filter(action="template.version_saved")
    assert event.data["terms_changed"] == {"findings_report_days": {"from": 90, "to": 60}}
    published = services.template_version_publish(actor=legal, version=draft)
    published_event = AuditEvent.objects.get(action="template.version_published", target_id=str(published.pk))
    assert published_event.data["terms"]["findings_report_days"] == 60
    following = services.template_version_new_draft(actor=legal, template=draft.template)
    assert following.number == 3 and following.obligation_terms == published.obligation_terms


def test_publishing_refuses_a_text_that_does_not_state_every_term(legal):
    body = "# Short\n\nFindings within {{ obligations.findings_report_days }} days.\n"
    draft = services.template_create(actor=legal, name="Short", body=body)  # saving a draft is fine
    with pytest.raises(ValidationError) as excinfo:
        services.template_version_publish(actor=legal, version=draft)
    message = excinfo.value.message_dict["body"][0]
    for name in OBLIGATION_PLACEHOLDERS[1:]:
        assert f"{{{{ {name} }}}}" in message
    assert "{{ obligations.findings_report_days }}" not in message
    draft.refresh_from_db()
    assert draft.is_draft and draft.sha256 == ""
    with pytest.raises(ValidationError):
        services.template_version_save_and_publish(actor=legal, version=draft, body=body + "\nMore.\n")
    draft.refresh_from_db()
    assert draft.body == body, "saved and published together, or neither"
    published = services.template_version_save_and_publish(
        actor=legal, version=draft, body=body + OBLIGATION_TERMS_CLAUSE
    )
    assert published.status == TemplateVersion.Status.PUBLISHED


def test_the_default_template_states_every_term():
    for name in OBLIGATION_PLACEHOLDERS:
        assert f"{{{{ {name} }}}}" in DEFAULT_TEMPLATE


# --- Pages --------------------------------------------------------------------------------------------


def test_the_editor_offers_the_terms_beside_the_text_and_saves_them(client, legal, draft):
    client.force_login(legal)
    url = reverse("template_version", args=[draft.pk])
    page = text_of(client.get(url))
    assert "Obligation terms" in page
    for name in TERMS:
        assert f'name="{name}"' in page
    assert 'value="90"' in page and 'min="1"' in page and 'max="720"' in page
    response = client.post(url, {"body": draft.body, **TERMS})
    assert response.status_code == 302
    draft.refresh_from_db()
    assert draft.obligation_terms == {name: int(value) for name, value in TERMS.items()}


def test_a_bad_term_is_shown_next_to_its_field_and_nothing_is_saved(client, legal, draft):
    client.force_login(legal)
    url = reverse("template_version", args=[draft.pk])
    response = client.post(url, {"body": draft.body + "\nChanged.\n", **TERMS, "incident_report_hours": "1000"})
    assert response.status_code == 400
    page = text_of(response)
    assert "Enter a whole number of hours from 1 to 720 for the incident report window." in page
    assert 'value="1000"' in page  # what was typed stays on screen to be fixed
    response = client.post(url, {"body": draft.body, **TERMS, "final_report_days": "soon"})
    assert response.status_code == 400 and "Enter a whole number, like 30." in text_of(response)
    draft.refresh_from_db()
    assert draft.incident_report_hours == 72 and "Changed." not in draft.body


def test_publishing_from_the_editor_names_the_missing_placeholders(client, legal, draft):
    client.force_login(legal)
    body = draft.body.replace("{{ obligations.final_report_days }}", "thirty")
    response = client.post(reverse("template_version", args=[draft.pk]), {"body": body, **TERMS, "publish": "1"})
    assert response.status_code == 400
    assert "it does not mention {{ obligations.final_report_days }}" in text_of(response)
    draft.refresh_from_db()
    assert draft.is_draft


def test_the_preview_uses_the_terms_as_typed_and_warns_of_unstated_ones(client, legal):
    client.force_login(legal)
    body = "# T\n\nFindings within {{ obligations.findings_report_days }} days.\n"
    html = text_of(client.post(reverse("template_preview"), {"body": body, **TERMS, "findings_report_days": "45"}))
    assert "Findings within 45 days." in html
    assert "Before publishing, state these obligation terms in the text" in html
    assert "obligations.incident_report_hours" in html


def test_a_new_template_takes_its_terms_from_the_form(client, legal):
    client.force_login(legal)
    response = client.post(reverse("template_create"), {"name": "Strict", "body": DEFAULT_TEMPLATE, **TERMS})
    assert response.status_code == 302
    version = TemplateVersion.objects.get(template__name="Strict")
    assert version.findings_report_days == 60 and version.prepublication_review_days == 21


def test_a_published_version_shows_its_terms_read_only(client, auditor, published_version):
    client.force_login(auditor)
    page = text_of(client.get(reverse("template_version", args=[published_version.pk])))
    assert "Obligation terms" in page and "Findings report due (days)" in page
    assert "{{ obligations.findings_report_days }}" in page
    assert 'name="findings_report_days"' not in page


def test_the_comparison_lists_changed_terms(client, legal, published_version, draft):
    services.template_version_save(
        actor=legal, version=draft, body=draft.body, terms=terms(findings_report_days=60, incident_report_hours=24)
    )
    client.force_login(legal)
    url = reverse("template_diff", args=[published_version.template.pk])
    html = text_of(client.get(url, {"left": published_version.pk, "right": draft.pk}))
    assert "2 changed obligation terms" in html
    assert "<td>Findings report due (days)</td><td><del>90</del></td><td><ins><strong>60</strong></ins></td>" in html
    assert "<td>Incidents reported within (hours)</td><td><del>72</del></td>" in html
    assert "Final report due" not in html.split('data-testid="term-changes"')[1].split("</section>")[0]
    same = text_of(client.get(url, {"left": published_version.pk, "right": published_version.pk}))
    assert "have the same obligation terms" in same
