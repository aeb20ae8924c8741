"""The demo's history: twelve weeks of a staged release, replayed through the services at their dates.

seed_demo calls `replay_history` on a fresh database. Each step runs with the clock set to its day
(time-machine), through the same services people use, so the agreement's signed text, the audit
chain, the usage ledger and the samples all agree with each other: Partner A signed eighty days
ago, generated samples most days of the last five weeks, reported a finding that the lab accepted
and has a second one in review; today the lab decides to offer gpt2-large to Partner A.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, time, timedelta

import time_machine
from django.utils import timezone

from accounts.models import Organization, User
from agreements.models import Agreement, Obligation
from inference import services as inference
from inference.models import GenerationJob
from inference.tasks import run_job
from models_registry.models import Checkpoint
from research.models import Finding, ReleaseDecision
from research.services import findings, releases

AGREEMENT_DAYS_AGO = 80
USAGE_DAYS = 35
# Jobs per weekday over the five weeks: a team that generates in bursts, less at weekends.
JOBS_PER_DAY = (2, 3, 1, 2, 3, 0, 0)
PROMPTS = (
    "The minister said on Tuesday that the new rules would",
    "Scientists at the university have found that",
    "In a statement released this morning, the company",
    "The report, published by the committee, concludes that",
    "Local residents told reporters that the flooding",
    "According to the latest figures, unemployment",
)

ACCEPTED_TITLE = "Newsroom readers mistake 124M samples for wire copy one time in four"
ACCEPTED_SUMMARY = (
    "We showed 400 readers pairs of short news paragraphs, one written by a journalist and one sampled "
    "from **gpt2** (temperature 0.9, top-p 0.9).\n\n"
    "- Readers picked the machine text as human-written in **26%** of pairs (95% CI 22 to 30%).\n"
    "- Accuracy rose to 81% when the paragraph contained a named source.\n\n"
    "The cited jobs hold the samples we used; their SHA-256 hashes are in the appendix of our draft."
)
IN_REVIEW_TITLE = "A 355M detector baseline: logistic regression on token ranks"
IN_REVIEW_SUMMARY = (
    "A detector trained on token-rank histograms separates **gpt2-medium** samples from human news text "
    "with an AUC of 0.87 at 100 tokens, falling to 0.71 at 30 tokens.\n\n"
    "We intend to publish the detector and its training data; the samples are labelled as synthetic."
)
DECISION_RATIONALE = (
    "Partner A's accepted finding shows readers misjudge 124M samples in a quarter of cases, and its "
    "detector work on 355M is in review. No misuse has been reported on the smaller stages. We offer "
    "gpt2-large to Partner A, whose reports are up to date, to extend the detection study before any "
    "wider release."
)


@contextmanager
def on_day(days_ago: int, hour: int = 10) -> Iterator[None]:
    """Run the block with the clock at `hour`:00 UTC, `days_ago` days before today; the clock ticks on."""
    day = timezone.now().date() - timedelta(days=days_ago)
    with time_machine.travel(datetime.combine(day, time(hour), tzinfo=UTC), tick=True):
        yield


def replay_history(
    *, sign: Callable[[User, Agreement], None], send: Callable[[Organization, list[Checkpoint]], Agreement]
) -> None:
    """Partner A's agreement, five weeks of jobs, two findings and a release decision, each at its date.

    `send` drafts and sends an agreement and `sign` signs it as a demo signer (seed_demo's own steps).
    """
    researcher = User.objects.get(email="researcher@partner-a.example")
    legal = User.objects.get(email="legal@lab.example")
    partner_a = researcher.membership.organization
    small = list(Checkpoint.objects.filter(slug__in=["gpt2", "gpt2-medium"]).order_by("parameter_count"))

    with on_day(AGREEMENT_DAYS_AGO, hour=9):
        agreement = send(partner_a, small)
        for email in ("signer@partner-a.example", "legal@lab.example"):
            agreement.refresh_from_db()
            sign(User.objects.get(email=email), agreement)

    cited: list[int] = []
    for days_ago in range(USAGE_DAYS, 0, -1):
        day = timezone.now().date() - timedelta(days=days_ago)
        for n in range(JOBS_PER_DAY[day.weekday()]):
            with on_day(days_ago, hour=10 + 2 * n):
                checkpoint = small[1] if (days_ago + n) % 3 == 0 else small[0]  # mostly 124M, some 355M
                job = _generate(researcher, checkpoint, seed=days_ago * 10 + n)
                cited.append(job.pk)

    report = Obligation.objects.get(
        organization=partner_a, kind=Obligation.Kind.FINDINGS_REPORT, checkpoint__slug="gpt2"
    )
    with on_day(20, hour=14):
        accepted = findings.finding_submit(
            actor=researcher,
            checkpoints=[small[0]],
            cited_job_ids=cited[-30:-27],
            obligation=report,
            title=ACCEPTED_TITLE,
            category=Finding.Category.DETECTION,
            summary=ACCEPTED_SUMMARY,
        )
    with on_day(18, hour=11):
        findings.finding_review(actor=legal, finding=accepted, action="acknowledge", comment="")
    with on_day(15, hour=16):
        findings.finding_review(
            actor=legal, finding=accepted, action="accept", comment="Clear method; thank you for the CIs."
        )
    with on_day(3, hour=15):
        in_review = findings.finding_submit(
            actor=researcher,
            checkpoints=[small[1]],
            cited_job_ids=cited[-4:-2],
            title=IN_REVIEW_TITLE,
            category=Finding.Category.DETECTABILITY,
            summary=IN_REVIEW_SUMMARY,
            publication_venue="Workshop on Synthetic Media Detection",
            publication_date=timezone.now().date() + timedelta(days=45),
        )
    with on_day(2, hour=10):
        findings.finding_review(actor=legal, finding=in_review, action="acknowledge", comment="")


def decide_release() -> None:
    """Today's decision on gpt2-large (today, so the amendment it drafts takes effect when legal sends it)."""
    lab_admin = User.objects.get(email="admin@lab.example")
    partner_a = Organization.objects.get(name="Partner A")
    large = Checkpoint.objects.get(slug="gpt2-large")
    if not ReleaseDecision.objects.filter(checkpoint=large).exists():
        releases.release_decide(
            actor=lab_admin,
            checkpoint=large,
            decision=ReleaseDecision.Decision.RELEASE_TO_PARTNERS,
            rationale=DECISION_RATIONALE,
            partners=[partner_a],
            after=None,
        )


def _generate(researcher: User, checkpoint: Checkpoint, *, seed: int) -> GenerationJob:
    """One job submitted as the researcher would, and run here and now as the worker would."""
    job = inference.job_submit(
        actor=researcher,
        checkpoint=checkpoint,
        params=inference.JobParams(
            prompt=PROMPTS[seed % len(PROMPTS)],
            max_new_tokens=40,
            temperature=0.9,
            top_k=0,
            top_p=0.9,
            num_samples=2,
            seed=seed,
        ),
    )
    # The queued message still reaches the worker later; it finds the job finished and does nothing.
    run_job(job.pk)
    job.refresh_from_db()
    return job
