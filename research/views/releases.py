"""Stage reviews and release decisions: each checkpoint's evidence with its charts, and the lab admin's decision.

Lab staff read a review (partners get 404: a review is none of theirs); only lab admins decide. Every
chart is drawn on the server (research.charts) from the same rows the page shows beneath it as a table
and the CSV download serves, so the three never disagree.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST

from accounts.permissions import has_role, request_user, require_role
from accounts.views import apply_validation_error
from inference.models import GenerationJob
from research import charts
from research.forms.releases import DECISION_HELP, ReleaseDecisionForm
from research.models import Finding, ReleaseDecision
from research.selectors import releases as selectors
from research.selectors.releases import OBLIGATION_COLUMNS, OBLIGATION_LABELS, RELEASE_DECIDERS, StageReview
from research.services.releases import DecisionConflict, release_decide

FINDING_COLOURS = {
    "submitted": "#56B4E9",
    "acknowledged": "#0072B2",
    "changes_requested": "#E69F00",
    "accepted": "#009E73",
}
JOB_COLOURS = {
    "queued": "#56B4E9",
    "running": "#0072B2",
    "succeeded": "#009E73",
    "failed": "#D55E00",
    "cancelled": "#7F7F7F",
}
OBLIGATION_COLOURS = {
    "fulfilled": "#009E73",
    "fulfilled_late": "#E69F00",
    "overdue": "#D55E00",
    "open": "#0072B2",
    "waived": "#7F7F7F",
}


@dataclass(frozen=True)
class ChartBlock:
    """One chart on the page with the numbers it draws: the table beneath it, and its CSV."""

    key: str
    title: str
    svg: SafeString
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""


def _day(day: Any) -> str:
    return f"{day.day} {day:%b}"


def review_charts(review: StageReview) -> list[ChartBlock]:
    """The review's charts, each from the rows its table and CSV hold."""
    slug = review.checkpoint.slug
    blocks = []

    # Tokens per day: one line per partner that used the checkpoint in the window.
    users = [p for p in review.partners if p.tokens_used]
    title = f"Tokens generated on {slug} per day, by partner"
    blocks.append(
        ChartBlock(
            key="tokens",
            title=title,
            svg=charts.line_chart(
                chart_id="chart-tokens",
                title=title,
                description=(
                    f"{review.tokens_used:,} tokens in all from {review.window_start:%d %B} to "
                    f"{review.window_end:%d %B %Y}, from the usage ledger; ticks mark Mondays."
                ),
                x_labels=[_day(d) for d in review.days],
                series=[charts.Series(p.organization.name, p.tokens_by_day) for p in users],
                empty_note="No tokens generated in these eight weeks",
            ),
            columns=["Day (UTC)", *(p.organization.name for p in users), "Total"],
            rows=[
                [day.isoformat(), *(p.tokens_by_day[i] for p in users), sum(p.tokens_by_day[i] for p in users)]
                for i, day in enumerate(review.days)
            ],
        )
    )

    # Quota use: tokens used as a share of what each partner's grants allowed over the window.
    granted = [p for p in review.partners if p.quota_capacity]
    title = f"Daily quota used over the eight weeks, by partner ({slug})"
    blocks.append(
        ChartBlock(
            key="quota",
            title=title,
            svg=charts.bar_chart(
                chart_id="chart-quota",
                title=title,
                description="Tokens generated as a share of the tokens the partner's grants allowed in the window.",
                categories=[p.organization.name for p in granted],
                series=[charts.Series("Quota used", [100 * (p.quota_use or 0) for p in granted], "#0072B2")],
                value_format=charts.percent,
                max_value=100,
                show_legend=False,
                empty_note=f"No partner held a grant of {slug} in the window",
            ),
            columns=["Partner", "Tokens generated", "Tokens allowed", "Quota used (%)"],
            rows=[
                [p.organization.name, p.tokens_used, p.quota_capacity, f"{100 * (p.quota_use or 0):.1f}"]
                for p in granted
            ],
        )
    )

    # Jobs per week by status.
    statuses = GenerationJob.Status.choices
    title = f"Generation jobs on {slug} per week, by status"
    blocks.append(
        ChartBlock(
            key="jobs",
            title=title,
            svg=charts.column_chart(
                chart_id="chart-jobs",
                title=title,
                description=f"{review.jobs_total:,} jobs submitted in the eight weeks, per ISO week (Monday first).",
                x_labels=[_day(row.week) for row in review.jobs_by_week],
                series=[
                    charts.Series(str(label), [row.counts[s] for row in review.jobs_by_week], JOB_COLOURS[s])
                    for s, label in statuses
                ],
                empty_note="No jobs in these eight weeks",
            ),
            columns=["Week from (UTC)", *(str(label) for _, label in statuses), "Total"],
            rows=[
                [row.week.isoformat(), *(row.counts[s] for s, _ in statuses), row.total] for row in review.jobs_by_week
            ],
        )
    )

    finding_statuses = Finding.Status.choices

    def finding_series(counts: list[dict[str, int]]) -> list[charts.Series]:
        return [charts.Series(str(label), [c[s] for c in counts], FINDING_COLOURS[s]) for s, label in finding_statuses]

    title = f"Findings on {slug} by category and review state"
    categories = review.findings_by_category
    blocks.append(
        ChartBlock(
            key="findings",
            title=title,
            svg=charts.bar_chart(
                chart_id="chart-findings",
                width=charts.NARROW,
                title=title,
                description=f"{len(review.findings)} findings concern {slug}, counted by category, stacked by state.",
                categories=[row.label for row in categories],
                series=finding_series([row.counts for row in categories]),
            ),
            columns=["Category", *(str(label) for _, label in finding_statuses), "Total"],
            rows=[[row.label, *(row.counts[s] for s, _ in finding_statuses), row.total] for row in categories],
        )
    )

    reporters = [p for p in review.partners if p.findings_total]
    title = f"Findings on {slug} by partner and review state"
    blocks.append(
        ChartBlock(
            key="findings_by_partner",
            title=title,
            svg=charts.bar_chart(
                chart_id="chart-findings-partner",
                width=charts.NARROW,
                title=title,
                description="Findings per partner, stacked by the lab's review state.",
                categories=[p.organization.name for p in reporters],
                series=finding_series([p.findings for p in reporters]),
                empty_note=f"No partner has reported a finding on {slug}",
            ),
            columns=["Partner", *(str(label) for _, label in finding_statuses), "Total"],
            rows=[
                [p.organization.name, *(p.findings[s] for s, _ in finding_statuses), p.findings_total]
                for p in reporters
            ],
        )
    )

    owing = [p for p in review.partners if any(p.obligations.values())]
    title = "Obligations by partner, as of now"
    blocks.append(
        ChartBlock(
            key="obligations",
            title=title,
            svg=charts.bar_chart(
                chart_id="chart-obligations",
                width=charts.NARROW,
                title=title,
                description="Each partner's obligations under all its agreements: fulfilled on time or late, "
                "overdue, open or waived.",
                categories=[p.organization.name for p in owing],
                series=[
                    charts.Series(OBLIGATION_LABELS[c], [p.obligations[c] for p in owing], OBLIGATION_COLOURS[c])
                    for c in OBLIGATION_COLUMNS
                ],
                empty_note="No partner owes anything yet",
            ),
            columns=["Partner", *(OBLIGATION_LABELS[c] for c in OBLIGATION_COLUMNS)],
            rows=[[p.organization.name, *(p.obligations[c] for c in OBLIGATION_COLUMNS)] for p in owing],
        )
    )
    return blocks


@login_required
def stage_review_index(request: HttpRequest) -> HttpResponse:
    rows = selectors.stage_review_index(user=request_user(request))
    return render(request, "research/stage_review_index.html", {"rows": rows})


@login_required
def stage_review(request: HttpRequest, slug: str) -> HttpResponse:
    checkpoint = selectors.stage_review_checkpoint(user=request_user(request), slug=slug)
    return _stage_review_page(request, selectors.stage_review(user=request_user(request), checkpoint=checkpoint))


def _stage_review_page(
    request: HttpRequest, review: StageReview, form: ReleaseDecisionForm | None = None, status: int = 200
) -> HttpResponse:
    blocks = review_charts(review)
    can_decide = has_role(request.user, *RELEASE_DECIDERS)
    form = form or ReleaseDecisionForm()
    chosen = set(request.POST.getlist("partners")) if form.is_bound else set()
    # The page comes back scrolled to the first error (autofocus), not to its top, far from the form.
    focus = next((name for name in ("__all__", "decision", "partners", "rationale") if name in form.errors), "")
    if focus == "rationale":
        form.fields["rationale"].widget.attrs["autofocus"] = True
    context = {
        "review": review,
        "checkpoint": review.checkpoint,
        "charts": {b.key: b for b in blocks},
        "can_decide": can_decide,
        "form": form,
        "decision_choices": [
            {"value": value, "label": label, "help": DECISION_HELP[value], "checked": form["decision"].value() == value}
            for value, label in ReleaseDecision.Decision.choices
        ],
        "partner_choices": [{"row": p, "checked": str(p.organization.pk) in chosen} for p in review.partners],
        "latest": review.latest_decision,
        "focus": focus,
    }
    return render(request, "research/stage_review.html", context, status=status)


@login_required
@require_POST
def stage_review_decide(request: HttpRequest, slug: str) -> HttpResponse:
    """Record the lab admin's decision; errors go next to their fields, a conflict (409) above the form."""
    user = request_user(request)
    checkpoint = selectors.stage_review_checkpoint(user=user, slug=slug)
    require_role(user, *RELEASE_DECIDERS)
    form = ReleaseDecisionForm(request.POST)
    status = 400
    if form.is_valid():
        data = form.cleaned_data
        after = selectors.release_decision_of(checkpoint=checkpoint, pk=data["after"]) if data["after"] else None
        try:
            if data["after"] and after is None:
                raise DecisionConflict(
                    f"The decision this page showed is not one of {checkpoint.slug}'s; nothing was recorded. "
                    "Read the stage review again and decide."
                )
            decision = release_decide(
                actor=user,
                checkpoint=checkpoint,
                decision=data["decision"],
                rationale=data["rationale"],
                partners=list(data["partners"]),
                after=after,
            )
        except DecisionConflict as exc:
            form.add_error(None, exc.message)
            status = exc.status
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, _decided_message(decision))
            return redirect("stage_review", slug=checkpoint.slug)
    checkpoint.refresh_from_db()
    return _stage_review_page(request, selectors.stage_review(user=user, checkpoint=checkpoint), form, status)


def _decided_message(decision: ReleaseDecision) -> str:
    effects = selectors.release_decision_effects(decision)
    parts = [f"{decision.reference} recorded: {decision.get_decision_display().lower()}."]
    amendments = effects.get("amendments") or {}
    if amendments:
        drafted = ", ".join(f"{reference} for {name}" for reference, name in amendments.items())
        parts.append(f"Amendments drafted for legal to send: {drafted}.")
    for name, why in (effects.get("skipped") or {}).items():
        parts.append(f"No amendment for {name}: {why}.")
    if effects.get("public_grants"):
        parts.append(f"{effects['public_grants']} active agreements now grant it.")
    return " ".join(parts)


@login_required
def stage_review_usage_csv(request: HttpRequest, slug: str) -> HttpResponse:
    """The numbers of one chart (?chart=tokens by default) as CSV, for a spreadsheet."""
    checkpoint = selectors.stage_review_checkpoint(user=request_user(request), slug=slug)
    review = selectors.stage_review(user=request_user(request), checkpoint=checkpoint)
    key = request.GET.get("chart", "tokens")
    blocks = {b.key: b for b in review_charts(review)}
    if key not in blocks:
        raise Http404(f"No chart called {key!r}; there are: {', '.join(blocks)}.")
    block = blocks[key]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(block.columns)
    writer.writerows([[_csv_cell(value) for value in row] for row in block.rows])
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    name = f"{checkpoint.slug}-stage-review-{key.replace('_', '-')}-{review.window_end:%Y%m%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _csv_cell(value: object) -> object:
    # A partner's name starting like a formula would run in a spreadsheet; a quote keeps it text.
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + value
    return value
