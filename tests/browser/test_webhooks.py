"""Webhooks in real Chromium: Partner A's admin registers a receiver, copies the secret once, watches
the delivery log fill (one delivered, one answered 500 and retrying), and resends; Partner B's admin
finds nothing."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from agreements import services as agreement_services
from tests.browser.conftest import PHONE, login, screenshot
from tests.browser.test_personas import assert_fits_width
from tests.builders import sign
from tests.webhooks.conftest import receiver  # noqa: F401  # the local receiver fixture
from webhooks.models import WebhookEndpoint


def test_a_partner_admin_registers_a_webhook_and_reads_its_delivery_log(
    page: Page,
    live_server,
    admin_a,
    admin_b,
    legal,
    signer_a,
    draft,
    receiver,  # noqa: F811
):
    login(page, live_server, admin_a.email)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Webhooks").click()
    expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_visible()
    screenshot(page, "webhooks-empty")

    page.get_by_label("Receiver URL").fill(receiver.url)
    page.get_by_label("Description").fill("Partner A compliance bot")
    page.get_by_label("An agreement is sent for signature").check()
    page.get_by_label("The partner signs an agreement").check()
    page.get_by_role("button", name="Register endpoint").click()
    secret = page.get_by_test_id("new-secret")
    expect(secret).to_have_value(re.compile(r"^whsec_"))
    screenshot(page, "webhooks-secret-once")
    detail_url = f"{live_server.url}/webhooks/{WebhookEndpoint.objects.get().pk}/"

    agreement_services.agreement_send(actor=legal, agreement=draft)  # delivered: the receiver answers 200
    receiver.mode = "error"
    sign(signer_a, draft)  # answered 500: retried later
    page.goto(f"{live_server.url}/webhooks/")
    page.get_by_role("link", name=receiver.url).click()
    log = page.get_by_role("table")
    expect(log.get_by_text("Delivered")).to_be_visible()
    expect(log.get_by_text("Retrying")).to_be_visible()
    expect(log.get_by_text("HTTP 500")).to_be_visible()
    expect(page.get_by_test_id("new-secret")).to_have_count(0)  # shown once
    screenshot(page, "webhooks-delivery-log")

    receiver.mode = "ok"
    page.get_by_role("button", name="Resend").first.click()
    expect(page.get_by_text("queued again")).to_be_visible()
    assert len(receiver.requests) == 3

    page.set_viewport_size(PHONE)
    screenshot(page, "webhooks-delivery-log-phone")
    assert_fits_width(page, PHONE["width"])

    page.context.clear_cookies()
    login(page, live_server, admin_b.email)
    response = page.goto(detail_url)
    assert response is not None and response.status == 404
