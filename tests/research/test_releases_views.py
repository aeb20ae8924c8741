"""Stage review pages per persona: the review with its charts and tables, the decision form, its errors,
the CSV of each chart, the index, and the registry page showing the decisions."""

from __future__ import annotations

import csv
import io

import pytest
from django.urls import reverse
from django.utils.html import escape

from agreements.models import Agreement
from audit.models import AuditEvent
from models_registry.models import Checkpoint
from research.charts import Series, bar_chart, column_chart, line_chart
from research.models import ReleaseDecision
from tests.research.test_releases import RATIONALE, World, stage_world

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(published_version, lab_admin, legal, auditor, partner_a, partner_b, researcher_a, researcher_b) -> World:
    return stage_world(legal, published_version, lab_admin, partner_a, partner_b)


def review_url(world: World) -> str:
    return reverse("stage_review", args=[world.large.slug])


def post_decision(client, world: World, **overrides):
    data = {"decision": "release_to_partners", "partners": [world.a.pk], "rationale": RATIONALE, "after": ""}
    data.update(overrides)
    return client.post(reverse("stage_review_decide", args=[world.large.slug]), data)


# --- Who sees what -------------------------------------------------------------------------------------


def test_the_lab_admin_sees_the_evidence_the_charts_and_the_form(client, world):
    client.force_login(world.lab_admin)
    response = client.get(review_url(world))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Stage review: GPT-2 Large" in page
    assert page.count('role="img"') == 6  # tokens, quota, jobs, findings x2, obligations
    assert page.count("Download CSV") == 6
    assert 'action="/checkpoints/gpt2-large/stage-review/decide/"' in page
    # Partners in good standing can be chosen; the others are listed, disabled, saying why.
    assert f'name="partners" value="{world.a.pk}"' in page and f'name="partners" value="{world.c.pk}"' in page
    assert f'name="partners" value="{world.b.pk}"' not in page
    assert "not in good standing: Findings report on gpt2" in page
    assert "not in good standing: no active agreement" in page
    assert "data-confirm=" in page


@pytest.mark.parametrize("persona", ["auditor", "legal"])
def test_other_lab_staff_read_the_review_without_the_form(client, request, world, persona):
    client.force_login(request.getfixturevalue(persona))
    response = client.get(review_url(world))
    assert response.status_code == 200
    page = response.content.decode()
    assert 'role="img"' in page and "stage-review/decide/" not in page
    assert "Lab admins record release decisions" in page
    assert post_decision(client, world).status_code == 403
    assert not ReleaseDecision.objects.exists()


@pytest.mark.parametrize("persona", ["admin_a", "signer_a", "researcher_a", "researcher_b"])
def test_partners_are_told_nothing_of_stage_reviews(client, request, world, persona):
    client.force_login(request.getfixturevalue(persona))
    assert client.get(review_url(world)).status_code == 404
    assert client.get(reverse("stage_review_index")).status_code == 404
    assert client.get(reverse("stage_review_usage_csv", args=[world.large.slug])).status_code == 404
    assert post_decision(client, world).status_code == 404
    assert not ReleaseDecision.objects.exists()


def test_an_unknown_checkpoint_is_404(client, world):
    client.force_login(world.lab_admin)
    assert client.get(reverse("stage_review", args=["gpt3"])).status_code == 404


def test_signed_out_visitors_are_sent_to_sign_in(client, world):
    response = client.get(review_url(world))
    assert response.status_code == 302 and "/accounts/login/" in response.url


# --- Deciding ------------------------------------------------------------------------------------------


def test_recording_a_release_shows_on_the_review_and_the_registry_page(client, world):
    client.force_login(world.lab_admin)
    response = post_decision(client, world)
    assert response.status_code == 302 and response.url == review_url(world)
    decision = ReleaseDecision.objects.get()
    amendment = decision.amendments.get()

    page = client.get(review_url(world)).content.decode()
    assert f"{decision.reference} recorded: release to named partners in good standing." in page
    assert f"Amendments drafted for legal to send: {amendment.reference} for Partner A." in page
    assert RATIONALE.replace("'", "&#x27;") in page
    assert f'name="after" value="{decision.pk}"' in page  # the next decision is made knowing this one

    registry = client.get(reverse("checkpoint_detail", args=[world.large.slug])).content.decode()
    assert "Release decisions" in registry and decision.reference in registry
    assert RATIONALE.replace("'", "&#x27;") in registry
    assert reverse("stage_review_record", args=[decision.pk]) in registry


def test_a_decision_without_rationale_is_shown_the_error_next_to_the_field(client, world):
    client.force_login(world.lab_admin)
    response = post_decision(client, world, rationale="")
    assert response.status_code == 400
    page = response.content.decode()
    field = page[page.index('name="rationale"') - 400 :]
    assert "Give the rationale for this decision in at least a sentence" in field[:1500]
    assert not ReleaseDecision.objects.exists() and not Agreement.objects.filter(amends__isnull=False).exists()


def test_a_partner_not_in_good_standing_is_refused_naming_it(client, world):
    client.force_login(world.lab_admin)
    response = post_decision(client, world, partners=[world.a.pk, world.b.pk])
    assert response.status_code == 400
    assert "Only partners in good standing can be released to; not: Partner B (Findings report on gpt2" in (
        response.content.decode()
    )
    assert not ReleaseDecision.objects.exists()
    assert Checkpoint.objects.get(pk=world.large.pk).status == "embargoed"


def test_a_decision_racing_another_gets_a_conflict_and_changes_nothing(client, world):
    client.force_login(world.lab_admin)
    assert post_decision(client, world, decision="keep_embargoed", partners=[]).status_code == 302
    events = AuditEvent.objects.count()
    response = post_decision(client, world, after="")  # made on the page as it was before the first
    assert response.status_code == 409
    page = response.content.decode()
    assert "after you opened this review. Nothing was recorded" in page
    first = ReleaseDecision.objects.get()
    assert f'name="after" value="{first.pk}"' in page  # the page now shows the decision it lost to
    assert ReleaseDecision.objects.count() == 1 and AuditEvent.objects.count() == events


def test_an_after_of_another_checkpoint_is_a_conflict(client, world):
    client.force_login(world.lab_admin)
    client.post(
        reverse("stage_review_decide", args=["gpt2"]),
        {"decision": "keep_embargoed", "rationale": RATIONALE, "after": ""},
    )
    other = ReleaseDecision.objects.get()
    response = post_decision(client, world, after=str(other.pk))
    assert response.status_code == 409 and ReleaseDecision.objects.count() == 1


@pytest.mark.parametrize("after", ["abc", "-1", "0"])
def test_a_malformed_after_is_a_400_not_a_500(client, world, after):
    client.force_login(world.lab_admin)
    assert post_decision(client, world, after=after).status_code == 400


def test_the_index_lists_every_checkpoint_with_the_decision_in_force(client, world, auditor):
    client.force_login(world.lab_admin)
    post_decision(client, world)
    client.force_login(auditor)
    page = client.get(reverse("stage_review_index")).content.decode()
    for slug in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        assert reverse("stage_review", args=[slug]) in page
    assert "Release to named partners in good standing" in page and "none yet" in page


# --- The numbers behind each chart ---------------------------------------------------------------------


def test_each_chart_downloads_as_csv(client, world, auditor):
    client.force_login(auditor)
    url = reverse("stage_review_usage_csv", args=["gpt2"])
    response = client.get(url)
    assert response.status_code == 200 and response["Content-Type"] == "text/csv; charset=utf-8"
    assert (
        "attachment;" in response["Content-Disposition"]
        and "gpt2-stage-review-tokens-" in response["Content-Disposition"]
    )
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["Day (UTC)", "Total"]  # nobody generated anything yet: no partner columns
    assert len(rows) >= 51
    for chart in ("quota", "jobs", "findings", "findings_by_partner", "obligations"):
        assert client.get(f"{url}?chart={chart}").status_code == 200, chart
    obligations = list(csv.reader(io.StringIO(client.get(f"{url}?chart=obligations").content.decode())))
    assert obligations[0][:3] == ["Partner", "Fulfilled on time", "Fulfilled late"]
    assert ["Partner B", "0", "0", "1", "1", "0"] in obligations
    assert client.get(f"{url}?chart=nonsense").status_code == 404


def test_a_partner_named_like_a_formula_stays_text_in_the_csv(client, world, auditor):
    world.a.name = "=HYPERLINK(1)"
    world.a.save()
    client.force_login(auditor)
    body = client.get(reverse("stage_review_usage_csv", args=["gpt2"]) + "?chart=obligations").content.decode()
    assert "'=HYPERLINK(1)" in body


# --- The charts themselves ----------------------------------------------------------------------------

HOSTILE = '<script>alert("x")</script> & Co'


@pytest.mark.parametrize(
    "svg",
    [
        lambda: line_chart(
            chart_id="c",
            title=HOSTILE,
            description=HOSTILE,
            x_labels=["1 Jan", HOSTILE],
            series=[Series(HOSTILE, [1, 2])],
        ),
        lambda: column_chart(
            chart_id="c", title=HOSTILE, description="d", x_labels=[HOSTILE], series=[Series(HOSTILE, [3])]
        ),
        lambda: bar_chart(
            chart_id="c", title=HOSTILE, description="d", categories=[HOSTILE], series=[Series(HOSTILE, [3])]
        ),
    ],
)
def test_charts_escape_every_label_and_name_themselves(svg):
    markup = str(svg())
    assert "<script>" not in markup and "&lt;script&gt;" in markup
    assert markup.startswith("<svg") and 'role="img"' in markup and "viewBox=" in markup
    assert f'aria-label="{escape(HOSTILE)}"' in markup
    assert "<title" in markup and "<desc" in markup


def test_an_empty_chart_says_so():
    markup = str(
        line_chart(chart_id="c", title="t", description="d", x_labels=["a", "b"], series=[], empty_note="Nothing yet")
    )
    assert "Nothing yet" in markup
