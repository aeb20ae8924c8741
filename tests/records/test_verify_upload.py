"""Uploads the verification page and API refuse: over 20 MB, over Django's limit for form fields, malformed.

Each gets the form again with the reason next to the file field (the page) or the one error shape (the
API), never a 500.
"""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from audit.models import AuditEvent
from tests.api.conftest import client_with, error_of, token_for

pytestmark = pytest.mark.django_db

OVER_20_MB = b"%PDF-1.7\n" + b"0" * (25 * 1024 * 1024)
CSRF_SECRET = "b" * 32


def pdf(content: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile("record.pdf", content, "application/pdf")


def error_next_to_the_file_field(response) -> str:
    """The message shown in the file field's own box, where partials/field.html puts field errors."""
    html = response.content.decode()
    match = re.search(
        r'<div class="field has-error">.*?name="file".*?<ul class="errorlist"[^>]*><li>(.*?)</li>', html, re.S
    )
    assert match, "the form is shown again with an error next to the file field"
    return match.group(1)


def test_a_file_over_20_mb_gets_the_form_again_with_the_reason_next_to_the_field(client, researcher_a):
    client.force_login(researcher_a)
    events = AuditEvent.objects.count()
    response = client.post(reverse("record_verify"), {"file": pdf(OVER_20_MB)})
    assert response.status_code == 413
    assert error_next_to_the_file_field(response) == (
        "The file is over 20 MB; records are at most 20 MB, so this is not one of ours."
    )
    assert (
        'enctype="multipart/form-data"' in response.content.decode() and "Not verified" not in response.content.decode()
    )
    assert AuditEvent.objects.count() == events


def test_a_file_just_over_20_mb_is_measured_and_refused_the_same_way(client, researcher_a):
    client.force_login(researcher_a)
    response = client.post(reverse("record_verify"), {"file": pdf(b"%PDF-1.7\n" + b"0" * (20 * 1024 * 1024))})
    assert response.status_code == 400
    assert error_next_to_the_file_field(response) == (
        "The file is 21.0 MB; records are at most 20 MB, so this is not one of ours."
    )


def test_an_oversized_upload_is_refused_before_the_csrf_check_reads_it_and_csrf_still_guards_the_rest(researcher_a):
    client = Client(enforce_csrf_checks=True)
    client.force_login(researcher_a)
    refused = client.post(reverse("record_verify"), {"file": pdf(OVER_20_MB)})
    assert refused.status_code == 413, "refused on its declared size, before anything reads the body"
    forged = client.post(reverse("record_verify"), {"file": pdf(b"%PDF-1.7\nsmall\n")})
    assert forged.status_code == 403, "a fitting upload without the CSRF token is still refused"
    client.cookies[settings.CSRF_COOKIE_NAME] = CSRF_SECRET
    checked = client.post(
        reverse("record_verify"), {"file": pdf(b"%PDF-1.7\nsmall\n"), "csrfmiddlewaretoken": CSRF_SECRET}
    )
    assert checked.status_code == 200 and "Not verified" in checked.content.decode()


def test_a_pdf_pasted_into_a_form_field_over_django_s_limit_is_shown_on_the_form(client, researcher_a):
    # Form fields other than files count against DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB); Django would
    # answer its bare 400 page.
    client.force_login(researcher_a)
    response = client.post(reverse("record_verify"), {"file": "%PDF-" + "0" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE})
    assert response.status_code == 413
    assert error_next_to_the_file_field(response) == (
        "Send the PDF as a file upload (the form&#x27;s file field), not as text over 2.5 MB."
    )


def test_a_malformed_upload_is_shown_on_the_form(client, researcher_a):
    client.force_login(researcher_a)
    response = client.post(reverse("record_verify"), "not multipart", content_type="multipart/form-data")
    assert response.status_code == 400
    assert error_next_to_the_file_field(response) == (
        "The upload could not be read; choose one PDF file and send the form again."
    )


def test_signed_out_visitors_are_sent_to_sign_in_whatever_they_upload(client):
    response = client.post(reverse("record_verify"), {"file": pdf(OVER_20_MB)})
    assert response.status_code == 302 and response.url.startswith(reverse("account_login"))


# --- The API -------------------------------------------------------------------------------------

VERIFY = "/api/v1/records/verify/"


def assert_too_large(response) -> None:
    assert response.status_code == 413
    assert error_of(response) == {
        "code": "too_large",
        "message": "Uploads are limited to 20 MB; records are never larger.",
        "details": {},
    }


def test_the_api_refuses_a_file_over_20_mb_with_413_too_large(researcher_a):
    assert_too_large(client_with(token_for(researcher_a)).post(VERIFY, {"file": pdf(OVER_20_MB)}, format="multipart"))


def test_the_api_refuses_it_in_a_browser_session_too_where_the_csrf_check_reads_the_body_first(researcher_a):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(researcher_a)
    client.cookies[settings.CSRF_COOKIE_NAME] = CSRF_SECRET
    response = client.post(VERIFY, {"file": pdf(OVER_20_MB)}, format="multipart", HTTP_X_CSRFTOKEN=CSRF_SECRET)
    assert_too_large(response)
    fitting = client.post(VERIFY, {"file": pdf(b"%PDF-1.7\nsmall\n")}, format="multipart", HTTP_X_CSRFTOKEN=CSRF_SECRET)
    assert fitting.status_code == 200 and fitting.json()["ok"] is False


def test_the_api_measures_a_file_just_over_20_mb(researcher_a):
    response = client_with(token_for(researcher_a)).post(
        VERIFY, {"file": pdf(b"%PDF-1.7\n" + b"0" * (20 * 1024 * 1024))}, format="multipart"
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid" and error["details"] == {"file": ["The file is 21.0 MB; the limit is 20 MB."]}


def test_the_api_answers_a_malformed_upload_with_400(researcher_a):
    response = client_with(token_for(researcher_a)).post(VERIFY, "not multipart", content_type="multipart/form-data")
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "malformed_request" and error["message"].startswith("Multipart form parse error")
