"""The job pages: the form and its refusals, the live job page, the list, cancelling, and isolation.

Jobs submitted here stay queued (the test's transaction never commits, so nothing is enqueued);
a finished job is made by running the task in-process.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from agreements import services as agreements
from audit.models import AuditEvent
from inference import services, tasks
from inference.models import GenerationJob
from tests.inference.test_services import params

pytestmark = pytest.mark.django_db

GOOD = {
    "checkpoint": "gpt2",
    "prompt": "The partner shall label every sample",
    "max_new_tokens": "8",
    "num_samples": "2",
    "temperature": "0.8",
    "top_k": "40",
    "top_p": "0.95",
    "seed": "7",
    "idempotency_key": "form-1",
}


def form(**overrides) -> dict[str, str]:
    return {**GOOD, **overrides}


def submit(user, checkpoint, **overrides) -> GenerationJob:
    return services.job_submit(actor=user, checkpoint=checkpoint, params=params(**overrides))


def finished_job(user, checkpoint, **overrides) -> GenerationJob:
    job = submit(user, checkpoint, **overrides)
    tasks.run_job.apply(args=[job.pk])
    job.refresh_from_db()
    return job


def text(response) -> str:
    return response.content.decode()


# --- The form -------------------------------------------------------------------------------------


def test_the_form_offers_only_checkpoints_the_organisation_may_use_now(client, researcher_a, active, gpt2):
    client.force_login(researcher_a)
    response = client.get(reverse("job_create"))
    assert response.status_code == 200
    options = re.findall(r'<option value="([^"]+)"', text(response))
    assert options == ["gpt2", "gpt2-medium"]  # the agreement grants these two; large and xl are not offered
    assert "No active agreement grants gpt2-large" in text(response)
    # The limit is counted on the page and enforced by the server; a maxlength would cut a pasted prompt silently.
    assert "maxlength" not in text(response) and 'id="prompt-count"' in text(response)
    assert "/ 4,000</span>" in text(response)


def test_partner_a_submits_a_job_and_lands_on_its_page(client, researcher_a, active, gpt2):
    client.force_login(researcher_a)
    response = client.post(reverse("job_create"), form())
    job = GenerationJob.objects.get()
    assert response.status_code == 302 and response.url == reverse("job_detail", args=[job.pk])
    assert (job.checkpoint, job.requester, job.status) == (gpt2, researcher_a, "queued")
    assert (job.max_new_tokens, job.num_samples, job.temperature, job.top_k, job.top_p, job.seed) == (
        8, 2, 0.8, 40, 0.95, 7,
    )  # fmt: skip
    assert job.prompt == GOOD["prompt"] and job.grant.agreement == active


def test_sending_the_same_form_twice_makes_one_job(client, researcher_a, active, gpt2):
    client.force_login(researcher_a)
    first = client.post(reverse("job_create"), form())
    second = client.post(reverse("job_create"), form())
    assert first.url == second.url and GenerationJob.objects.count() == 1


def test_the_same_form_sent_again_with_other_settings_gets_a_fresh_key(client, researcher_a, active, gpt2):
    client.force_login(researcher_a)
    client.post(reverse("job_create"), form())
    response = client.post(reverse("job_create"), form(prompt="Something else"))
    assert response.status_code == 400
    assert "already sent as job" in text(response) and 'value="form-1"' not in text(response)
    assert GenerationJob.objects.count() == 1


def test_a_mangled_form_key_is_ignored_not_shown_as_an_invisible_error(client, researcher_a, active, gpt2):
    client.force_login(researcher_a)
    for key in ("k" * 300, "   "):
        response = client.post(reverse("job_create"), form(idempotency_key=key))
        assert response.status_code == 302
    assert GenerationJob.objects.filter(idempotency_key=None).count() == 2


def test_windows_line_breaks_count_as_one_character(client, researcher_a, active, gpt2):
    client.force_login(researcher_a)
    client.post(reverse("job_create"), form(prompt="line one\r\nline two"))
    assert GenerationJob.objects.get().prompt == "line one\nline two"


def test_partner_b_is_refused_with_the_missing_agreement_named_and_no_job(client, researcher_b, active, gpt2):
    client.force_login(researcher_b)
    response = client.post(reverse("job_create"), form())
    assert response.status_code == 403
    assert "Not queued: No active agreement grants gpt2." in text(response)
    assert reverse("access_request_create") in text(response)
    assert not GenerationJob.objects.exists()
    refusal = AuditEvent.objects.order_by("-seq").first()
    assert (refusal.action, refusal.actor, refusal.data["code"]) == ("access.refused", researcher_b, "no_agreement")


def test_partner_b_opening_the_form_is_told_why_and_where_to_ask(client, researcher_b, active, gpt2):
    client.force_login(researcher_b)
    response = client.get(reverse("job_create"))
    assert response.status_code == 200
    body = text(response)
    assert "Partner B cannot run jobs yet" in body and "No active agreement grants gpt2." in body
    assert "<select" not in body and reverse("access_request_create") in body


def test_a_job_over_the_daily_quota_is_refused_up_front(client, researcher_a, active, gpt2):
    grant = active.grants.get(checkpoint=gpt2)
    grant.daily_token_quota = 10
    grant.save()
    client.force_login(researcher_a)
    response = client.post(reverse("job_create"), form(max_new_tokens="8", num_samples="2"))
    assert response.status_code == 429
    assert "this needs up to 16 tokens but 10 of the daily token quota of 10 are left" in text(response).lower()
    assert not GenerationJob.objects.exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_new_tokens", "0", "greater than or equal to 1"),
        ("max_new_tokens", "513", "less than or equal to 512"),
        ("max_new_tokens", "abc", "Enter a whole number."),
        ("max_new_tokens", "1.5", "Enter a whole number."),
        ("max_new_tokens", "", "This field is required."),
        ("num_samples", "0", "greater than or equal to 1"),
        ("num_samples", "9", "less than or equal to 8"),
        ("num_samples", "many", "Enter a whole number."),
        ("temperature", "-0.1", "greater than or equal to 0"),
        ("temperature", "2.5", "less than or equal to 2"),
        ("temperature", "hot", "Enter a number, such as 0.8."),
        ("temperature", "inf", "Enter a number, such as 0.8."),
        ("temperature", "nan", "Enter a number, such as 0.8."),
        ("top_k", "-1", "greater than or equal to 0"),
        ("top_k", "1001", "less than or equal to 1000"),
        ("top_k", "4e2", "Enter a whole number."),
        ("top_p", "0", "top_p must be above 0 and at most 1."),
        ("top_p", "-0.5", "top_p must be above 0 and at most 1."),
        ("top_p", "1.01", "less than or equal to 1"),
        ("seed", "-1", "greater than or equal to 0"),
        ("seed", str(2**31), "less than or equal to 2147483647"),
        ("seed", "99999999999999999999999", "less than or equal to 2147483647"),
        ("seed", "lucky", "Enter a whole number."),
        ("prompt", "x" * 4001, "The prompt is 4,001 characters; the limit is 4,000."),
        ("prompt", "   ", "Write a prompt for the model to continue."),
        ("prompt", "nul \x00 byte", "Null characters are not allowed."),
        ("checkpoint", "gpt2-huge", "Choose a checkpoint from the list."),
    ],
)
def test_each_bad_input_is_answered_next_to_its_field(client, researcher_a, active, gpt2, field, value, message):
    client.force_login(researcher_a)
    response = client.post(reverse("job_create"), form(**{field: value}))
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == [field] and message in " ".join(errors[field])
    assert 'class="field has-error"' in text(response)
    assert not GenerationJob.objects.exists()


def test_the_services_context_check_is_shown_under_the_prompt(client, researcher_a, active, gpt2):
    # Characters the demo tokenizer never saw cost a token per byte: this prompt is over 1,000 tokens.
    long_prompt = "".join(chr(0x4E00 + n) for n in range(400))
    client.force_login(researcher_a)
    response = client.post(reverse("job_create"), form(prompt=long_prompt, max_new_tokens="512"))
    assert response.status_code == 400
    assert "exceeds gpt2's context of 1,024" in " ".join(response.context["form"].errors["prompt"])
    assert "exceeds gpt2&#x27;s context of 1,024" in text(response)
    assert not GenerationJob.objects.exists()


def test_lab_staff_cannot_submit_jobs(client, auditor, legal, active, gpt2):
    for user in (auditor, legal):
        client.force_login(user)
        assert client.get(reverse("job_create")).status_code == 403
        assert client.post(reverse("job_create"), form()).status_code == 403
    assert not GenerationJob.objects.exists()


def test_run_again_fills_the_form_with_the_jobs_settings(client, researcher_a, researcher_b, active, gpt2):
    job = submit(researcher_a, gpt2, prompt="Run me again", max_new_tokens=33, seed=5)
    client.force_login(researcher_a)
    response = client.get(reverse("job_create") + f"?from={job.pk}")
    assert "Run me again" in text(response) and 'value="33"' in text(response) and 'value="5"' in text(response)
    client.force_login(researcher_b)
    assert client.get(reverse("job_create") + f"?from={job.pk}").status_code == 404


# --- The job page and its live partial ------------------------------------------------------------


def test_a_queued_job_shows_its_place_in_the_queue_and_polls(client, researcher_a, active, gpt2):
    jobs = [submit(researcher_a, gpt2, prompt=f"Prompt {n}") for n in range(3)]
    client.force_login(researcher_a)
    response = client.get(reverse("job_detail", args=[jobs[2].pk]))
    body = text(response)
    assert "Position <strong>3</strong> in the queue: 2 jobs ahead of it." in body
    # It long-polls: the server answers the moment the job finishes, not at the next tick.
    assert f'hx-get="{reverse("job_live", args=[jobs[2].pk])}?wait=2"' in body and 'hx-trigger="load' in body
    assert "Cancel job" in body


def test_queue_position_counts_only_earlier_queued_jobs_on_the_same_queue(
    client, researcher_a, active, demo_checkpoints, settings
):
    gpt2, medium = demo_checkpoints["gpt2"], demo_checkpoints["gpt2-medium"]
    settings.INFERENCE_CHECKPOINT_QUEUES = {"gpt2-medium": "gpu-medium"}
    submit(researcher_a, medium)  # earlier, but on another queue
    first = submit(researcher_a, gpt2)
    cancelled = submit(researcher_a, gpt2)
    services.job_cancel(actor=researcher_a, job=cancelled)
    mine = submit(researcher_a, gpt2)
    submit(researcher_a, gpt2)  # later: behind it
    client.force_login(researcher_a)
    body = text(client.get(reverse("job_detail", args=[mine.pk])))
    assert "Position <strong>2</strong> in the queue: 1 job ahead of it." in body
    body = text(client.get(reverse("job_detail", args=[first.pk])))
    assert "Position <strong>1</strong> in the queue: it starts next." in body


def test_queue_position_counts_longer_jobs_of_its_checkpoint_that_start_first(client, researcher_a, active, gpt2):
    mine = submit(researcher_a, gpt2, max_new_tokens=16)
    submit(researcher_a, gpt2, max_new_tokens=64)  # later, but a running batch takes it first
    submit(researcher_a, gpt2, max_new_tokens=8)  # later and shorter: behind it
    client.force_login(researcher_a)
    body = text(client.get(reverse("job_detail", args=[mine.pk])))
    assert "Position <strong>2</strong> in the queue: 1 job ahead of it." in body
    # Once it has waited INFERENCE_LONGEST_FIRST_SECONDS, no later job goes ahead of it.
    GenerationJob.objects.filter(pk=mine.pk).update(created_at=timezone.now() - timedelta(seconds=60))
    body = text(client.get(reverse("job_detail", args=[mine.pk])))
    assert "Position <strong>1</strong> in the queue: it starts next." in body


def test_a_running_job_shows_tokens_so_far_of_expected(client, researcher_a, active, gpt2):
    job = submit(researcher_a, gpt2, max_new_tokens=64, num_samples=2)
    services.jobs_claim(job_id=job.pk, worker="w1", device="cpu", rows=32)
    services.job_progress(job_ids=[job.pk], tokens={job.pk: 32}, worker="w1")
    client.force_login(researcher_a)
    live = text(client.get(reverse("job_live", args=[job.pk])))
    assert 'role="progressbar"' in live and 'aria-valuenow="32"' in live and 'aria-valuemax="128"' in live
    assert "<strong>32</strong> of 128 tokens (25%)" in live and 'class="pct-25"' in live
    assert 'hx-trigger="load' in live and "?wait=2" in live
    assert '<span id="job-status" hx-swap-oob="true">' in live and "Running" in live
    assert 'id="job-actions"' not in live  # the cancel button is not replaced under the pointer while polling


def test_a_finished_job_shows_labelled_samples_and_the_partial_stops_polling(client, researcher_a, active, gpt2):
    job = finished_job(researcher_a, gpt2, num_samples=3, max_new_tokens=12, temperature=0.9, seed=4)
    assert job.status == "succeeded", job.error_message
    client.force_login(researcher_a)
    label = f"Synthetic text generated by GPT-2 124M under agreement {active.reference}"
    assert re.fullmatch(r"MPA-\d{5}", active.reference)
    for name in ("job_detail", "job_live"):
        body = text(client.get(reverse(name, args=[job.pk])))
        assert body.count(f'data-testid="sample-label">{label}</p>') == 3
        assert "hx-trigger" not in body and "hx-get" not in body
        assert "Cancel job" not in body
        for sample in job.samples.all():
            assert sample.sha256 == hashlib.sha256(sample.text.encode()).hexdigest() and sample.sha256 in body
            assert f"{sample.token_count} token" in body
        assert "Generation</dt>" in body and "cpu" in body and job.worker in body
    live = text(client.get(reverse("job_live", args=[job.pk])))
    assert '<div id="job-actions" class="actions" hx-swap-oob="true">' in live  # removes the cancel button


def test_a_failed_job_shows_why(client, legal, researcher_a, active, gpt2):
    job = submit(researcher_a, gpt2)
    agreements.agreement_terminate(actor=legal, agreement=active, reason="Breach of the labelling clause.")
    tasks.run_job.apply(args=[job.pk])
    client.force_login(researcher_a)
    body = text(client.get(reverse("job_detail", args=[job.pk])))
    assert "Failed" in body and f"Agreement {active.reference} that granted gpt2 was terminated" in body
    assert "access_denied" in body and "hx-trigger" not in body


def test_researcher_cancels_a_queued_job(client, researcher_a, active, gpt2):
    job = submit(researcher_a, gpt2)
    client.force_login(researcher_a)
    response = client.post(reverse("job_cancel", args=[job.pk]), follow=True)
    job.refresh_from_db()
    assert job.status == "cancelled" and job.cancel_requested_at is not None
    assert f"Job #{job.pk} cancelled before it started." in text(response)
    assert "Cancel job" not in text(response)


def test_cancelling_a_finished_job_says_so_without_an_error(client, researcher_a, active, gpt2):
    job = finished_job(researcher_a, gpt2)
    client.force_login(researcher_a)
    response = client.post(reverse("job_cancel", args=[job.pk]), follow=True)
    assert response.status_code == 200 and "there is nothing to cancel" in text(response)
    job.refresh_from_db()
    assert job.status == "succeeded"


def test_cancel_needs_a_post(client, researcher_a, active, gpt2):
    job = submit(researcher_a, gpt2)
    client.force_login(researcher_a)
    assert client.get(reverse("job_cancel", args=[job.pk])).status_code == 405
    job.refresh_from_db()
    assert job.status == "queued"


# --- Isolation and read-only lab staff ------------------------------------------------------------


def test_partner_b_cannot_see_poll_cancel_or_copy_partner_as_job(client, researcher_a, admin_b, active, gpt2):
    job = submit(researcher_a, gpt2, prompt="Partner A's confidential prompt")
    client.force_login(admin_b)
    for name in ("job_detail", "job_live"):
        assert client.get(reverse(name, args=[job.pk])).status_code == 404
    assert client.post(reverse("job_cancel", args=[job.pk])).status_code == 404
    assert client.get(reverse("job_create") + f"?from={job.pk}").status_code == 404
    listing = client.get(reverse("job_list"))
    assert listing.status_code == 200 and "confidential" not in text(listing) and f"#{job.pk}<" not in text(listing)
    job.refresh_from_db()
    assert job.status == "queued" and job.cancel_requested_at is None
    assert not AuditEvent.objects.filter(action="job.cancelled").exists()


def test_lab_staff_see_every_job_read_only(client, auditor, researcher_a, active, gpt2):
    job = submit(researcher_a, gpt2, prompt="Visible to the auditor")
    client.force_login(auditor)
    listing = text(client.get(reverse("job_list")))
    assert "Visible to the auditor" in listing and "Partner A" in listing and "New job" not in listing
    page = text(client.get(reverse("job_detail", args=[job.pk])))
    assert "Cancel job" not in page and "Run again" not in page
    assert client.post(reverse("job_cancel", args=[job.pk])).status_code == 403
    job.refresh_from_db()
    assert job.status == "queued"


def test_signed_out_visitors_are_sent_to_sign_in(client, researcher_a, active, gpt2):
    job = submit(researcher_a, gpt2)
    for url in (reverse("job_list"), reverse("job_create"), reverse("job_detail", args=[job.pk])):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response.url
    assert client.post(reverse("job_cancel", args=[job.pk])).status_code == 302
    # The polling partial asks htmx to open the sign-in page rather than swap it into the job page.
    response = client.get(reverse("job_live", args=[job.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and not response.content
    assert response["HX-Redirect"] == f"/accounts/login/?next=/jobs/{job.pk}/"
    # Opened directly (not by htmx), it is an ordinary redirect to the sign-in page.
    response = client.get(reverse("job_live", args=[job.pk]))
    assert response.status_code == 302 and response.url == f"/accounts/login/?next=/jobs/{job.pk}/"
    job.refresh_from_db()
    assert job.status == "queued"


# --- The list -------------------------------------------------------------------------------------


def test_the_list_filters_by_status_checkpoint_and_date(client, researcher_a, active, demo_checkpoints):
    gpt2, medium = demo_checkpoints["gpt2"], demo_checkpoints["gpt2-medium"]
    small = submit(researcher_a, gpt2, prompt="small one")
    big = submit(researcher_a, medium, prompt="medium one")
    services.job_cancel(actor=researcher_a, job=big)
    client.force_login(researcher_a)

    def shown(**query) -> set[int]:
        response = client.get(reverse("job_list"), query)
        assert response.status_code == 200, response.context["form"].errors
        return {job.pk for job in response.context["page"].object_list}

    assert shown() == {small.pk, big.pk}
    assert shown(status="cancelled") == {big.pk}
    assert shown(checkpoint="gpt2") == {small.pk}
    today = timezone.now().date()
    assert shown(created_after=today.isoformat(), created_before=today.isoformat()) == {small.pk, big.pk}
    assert shown(created_after=(today + timedelta(days=1)).isoformat()) == set()
    assert "No jobs match these filters." in text(client.get(reverse("job_list"), {"status": "failed"}))


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ({"status": "exploded"}, "status", "Choose a status from the list."),
        ({"checkpoint": "gpt2-huge"}, "checkpoint", "Choose a checkpoint from the list."),
        ({"created_after": "yesterday"}, "created_after", "Enter a valid date."),
        (
            {"created_after": "2026-02-02", "created_before": "2026-02-01"},
            "created_before",
            "The end date is before the start date.",
        ),
    ],
)
def test_bad_filters_are_answered_next_to_the_field(client, researcher_a, active, gpt2, query, field, message):
    client.force_login(researcher_a)
    response = client.get(reverse("job_list"), query)
    assert response.status_code == 400
    assert message in " ".join(response.context["form"].errors[field])


def test_the_list_costs_the_same_queries_at_1_10_and_30_jobs(client, researcher_a, active, gpt2):
    client.force_login(researcher_a)
    client.get(reverse("job_list"))  # warm the session and content types
    counts = []
    made = 0
    for total in (1, 10, 30):
        while made < total:
            job = submit(researcher_a, gpt2, prompt=f"Prompt {made}")
            if made % 3 == 0:
                services.job_cancel(actor=researcher_a, job=job)
            made += 1
        with CaptureQueriesContext(connection) as queries:
            response = client.get(reverse("job_list"))
        assert response.status_code == 200
        assert len(response.context["page"].object_list) == min(total, 25)
        counts.append(len(queries))
    assert counts[0] == counts[1] == counts[2], counts


def test_the_pages_of_the_list_keep_the_filters(client, researcher_a, active, gpt2):
    for n in range(27):
        submit(researcher_a, gpt2, prompt=f"Prompt {n}")
    client.force_login(researcher_a)
    body = text(client.get(reverse("job_list"), {"status": "queued"}))
    assert "Page 1 of 2 · 27 in all" in body and "?status=queued&page=2" in body


# --- Home and navigation --------------------------------------------------------------------------


def test_the_partner_home_lists_recent_jobs_and_offers_a_new_one(client, researcher_a, researcher_b, active, gpt2):
    job = submit(researcher_a, gpt2)
    client.force_login(researcher_a)
    body = text(client.get(reverse("home")))
    assert f'href="{reverse("job_detail", args=[job.pk])}">Job #{job.pk}</a>' in body
    assert f'href="{reverse("job_create")}">New job</a>' in body
    assert f'href="{reverse("job_list")}">Jobs</a>' in body  # in the navigation

    client.force_login(researcher_b)
    body = text(client.get(reverse("home")))
    assert f"Job #{job.pk}" not in body and "New job" not in body
    assert "Once access is granted you can queue sample-generation jobs" in body


def test_new_jobs_are_offered_only_to_an_organisation_that_may_run_them(
    client, researcher_a, researcher_b, active, gpt2
):
    client.force_login(researcher_b)  # Partner B has no agreement
    body = text(client.get(reverse("job_list")))
    assert "New job" not in body and "Queue the first one" not in body
    assert f'<a href="{reverse("access_request_create")}">request access</a>' in body

    client.force_login(researcher_a)
    body = text(client.get(reverse("job_list")))
    assert f'href="{reverse("job_create")}">New job</a>' in body and "Queue the first one" in body


def test_run_again_is_not_offered_once_the_checkpoint_is_withdrawn(client, researcher_a, lab_admin, active, gpt2):
    job = submit(researcher_a, gpt2)
    client.force_login(researcher_a)
    assert "Run again" in text(client.get(reverse("job_detail", args=[job.pk])))
    services.checkpoint_withdraw(actor=lab_admin, checkpoint=gpt2, reason="Memorised personal data found.")
    job.refresh_from_db()
    body = text(client.get(reverse("job_detail", args=[job.pk])))
    assert job.status == "cancelled" and "Run again" not in body


# --- The broker is down ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the job is sent when its transaction commits, as in production
def test_with_the_broker_down_the_form_lands_on_the_job_saying_it_starts_later(
    client,
    researcher_a,
    active,
    gpt2,
    broker_down,
):
    client.force_login(researcher_a)
    response = client.post(reverse("job_create"), form())
    job = GenerationJob.objects.get()
    assert response.status_code == 302 and response.url == reverse("job_detail", args=[job.pk])
    page = text(client.get(response.url))
    assert f"Job #{job.pk} is saved and queued on gpt2, but the workers&#x27; queue cannot be reached just now" in page
    again = client.post(reverse("job_create"), form())  # the same form sent again: the same job
    assert again.url == response.url and GenerationJob.objects.count() == 1
