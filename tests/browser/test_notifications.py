"""A researcher finds what happened on the home page, follows a notice, and switches a kind off."""

from __future__ import annotations

import re

from django.core import mail
from playwright.sync_api import Page, expect

from agreements import services as agreements
from inference import services as jobs
from models_registry.models import Checkpoint
from tests.browser.conftest import PHONE, login, screenshot
from tests.browser.test_personas import assert_fits_width
from tests.builders import make_job


def test_a_researcher_reads_notices_on_the_home_page_and_switches_one_kind_off(
    page: Page, live_server, legal, admin_a, researcher_a, researcher_b, active
):
    request = agreements.access_request_create(
        actor=researcher_a,
        checkpoints=[Checkpoint.objects.get(slug="gpt2-large")],
        purpose="Measuring how detectable GPT-2 Large samples are in news-style text.",
    )
    agreements.access_request_reject(
        actor=legal, access_request=request, reason="gpt2-large is not released to partners yet."
    )
    job = make_job(active.grants.get(checkpoint__slug="gpt2"), researcher_a)
    jobs.job_cancel(actor=admin_a, job=job)
    assert sorted(m.subject for m in mail.outbox if researcher_a.email in m.to) == [
        f"Access request #{request.pk} rejected: gpt2-large",
        f"Job #{job.pk} on gpt2 was cancelled",
    ]

    login(page, live_server, researcher_a.email)
    panel = page.get_by_test_id("home-notifications")
    expect(panel.get_by_role("heading", name=re.compile("Notifications"))).to_contain_text("2 unread")
    expect(panel).to_contain_text("gpt2-large is not released to partners yet.")
    screenshot(page, "notifications-home-desktop")

    panel.get_by_role("link", name=f"Access request #{request.pk} rejected: gpt2-large").click()
    expect(page).to_have_url(f"{live_server.url}/access-requests/{request.pk}/")
    page.goto(f"{live_server.url}/")
    expect(panel.get_by_role("heading", name=re.compile("Notifications"))).to_contain_text("1 unread")

    page.set_viewport_size(PHONE)
    assert_fits_width(page, PHONE["width"])
    screenshot(page, "notifications-home-phone")

    panel.get_by_role("link", name="Notification settings").click()
    expect(page).to_have_title(re.compile("^Notification settings"))
    assert_fits_width(page, PHONE["width"])
    page.get_by_label("Your generation job is cancelled by someone else or by the lab").uncheck()
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator(".messages")).to_contain_text("1 kind of notification switched off.")
    expect(page.get_by_label("Your generation job is cancelled by someone else or by the lab")).not_to_be_checked()
    expect(page.get_by_label("Your organisation's access request is approved or rejected")).to_be_checked()
    screenshot(page, "notifications-settings-phone")

    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{live_server.url}/notifications/")
    expect(page).to_have_title(re.compile("^Notifications"))
    page.get_by_role("button", name="Mark all read").click()
    expect(page.locator(".messages")).to_contain_text("1 notification marked read.")
    expect(page.locator("main")).not_to_contain_text("unread")
    screenshot(page, "notifications-list-desktop")

    # Another partner's researcher finds none of it.
    page.context.clear_cookies()
    login(page, live_server, researcher_b.email)
    expect(page.get_by_test_id("home-notifications")).to_contain_text("Nothing yet.")
