"""Findings: a partner submits what it learnt, the lab acknowledges it, asks for changes or accepts it, and
answers a planned publication within the days the agreement gives it.

Each write is one transaction with one audit event of its own; the obligations it meets are recorded by
agreements' services in the same transaction. Attachments are PDFs on disk under FINDINGS_DIR, one folder per
finding: a file is written whole (temporary name, then renamed) and removed again if its transaction fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import nh3
from django.conf import settings
from django.core.exceptions import PermissionDenied, SuspiciousFileOperation, ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.http import Http404
from django.urls import reverse
from django.utils import timezone
from django.utils.text import get_valid_filename
from markdown_it import MarkdownIt
from markdown_it.token import Token

from accounts.models import PARTNER_ROLES, NotificationKind, Role, User
from accounts.permissions import require_role
from accounts.services import notifications_send
from agreements import services as agreements
from agreements.models import Agreement, Obligation
from agreements.selectors import obligations_fulfillable
from audit import events
from audit.services import audit_append
from core.errors import DomainError
from core.time import day_start
from core.validators import strip_invisible, visible_length
from inference.models import GenerationJob
from models_registry.models import Checkpoint
from research.models import Finding, FindingAttachment, FindingReview
from research.selectors.findings import active_agreement, finding_checkpoints_allowed

FINDING_AUTHORS = PARTNER_ROLES
FINDING_REVIEWERS = (Role.LEGAL, Role.LAB_ADMIN)

TITLE_MAX_CHARS = 200
SUMMARY_MIN_CHARS = 20
SUMMARY_MAX_CHARS = 50_000
COMMENT_MAX_CHARS = 4_000
VENUE_MAX_CHARS = 200
MAX_ATTACHMENTS = 5
MAX_CITED_JOBS = 100
PDF_MAGIC = b"%PDF-"


class FindingStateChanged(DomainError):
    """Someone else moved the finding first (two reviewers at once, a stale page): nothing was changed."""

    status = 409
    code = "state_changed"


# --- The summary: Markdown, rendered once and sanitised ------------------------------------------------

# The agreements' dialect (agreements.rendering): CommonMark with tables. Raw HTML is parsed only so that it can
# be dropped (summary_render): a partner's HTML is never shown, not even as text.
_markdown = MarkdownIt("commonmark", {"html": True}).enable("table")
# The agreements' allowlist, with two differences for text a partner wrote: no images at all (a remote image
# would tell its owner who read the finding, and when), and every link marked nofollow.
_cleaner = nh3.Cleaner(
    tags={
        *("h1", "h2", "h3", "h4", "h5", "h6", "p", "br", "hr"),
        *("ul", "ol", "li", "strong", "em", "blockquote", "code", "pre", "a"),
        *("table", "thead", "tbody", "tr", "th", "td"),
    },
    attributes={"a": {"href"}, "ol": {"start"}, "th": {"style"}, "td": {"style"}},
    filter_style_properties={"text-align"},
    url_schemes={"http", "https", "mailto"},
    link_rel="noopener nofollow noreferrer",
    strip_comments=True,
)


def _walk(tokens: list[Token]) -> Iterator[Token]:
    for token in tokens:
        yield token
        if token.children:
            yield from _walk(token.children)


def summary_render(source: str) -> str:
    """The summary as pages and records show it: sanitised HTML (mark it safe where it is displayed).

    Raw HTML is removed (a <script> block with its content), Markdown images are dropped by the sanitiser,
    and links keep only http, https and mailto addresses."""
    tokens = _markdown.parse(source)
    for token in _walk(tokens):
        if token.type in ("html_block", "html_inline"):
            token.content = ""
    return _cleaner.clean(_markdown.renderer.render(tokens, _markdown.options, {}))


# --- Checking what is submitted ------------------------------------------------------------------------


def _clean_text(errors: dict[str, str], field: str, text: object, *, what: str, low: int, high: int) -> str:
    """Text a reader sees: at least `low` visible characters, at most `high` in all, no control characters."""
    if not isinstance(text, str):
        errors[field] = f"{what} must be text."
        return ""
    text = strip_invisible(text.replace("\r\n", "\n"))
    if "\x00" in text:
        errors[field] = f"{what} contains a NUL character; remove it and send it again."
    elif visible_length(text) < low:
        errors[field] = f"Write {what.lower()} of at least {low} characters." if low > 1 else f"Write {what.lower()}."
    elif len(text) > high:
        errors[field] = f"Keep {what.lower()} to {high:,} characters (it has {len(text):,})."
    return text


def _clean_comment(text: str, *, required: bool, field: str, what: str) -> str:
    text = strip_invisible((text or "").replace("\r\n", "\n"))
    if required and visible_length(text) < 5:
        raise ValidationError({field: f"Write {what} (at least a few words): the partner reads it."})
    if len(text) > COMMENT_MAX_CHARS:
        raise ValidationError({field: f"Keep it to {COMMENT_MAX_CHARS:,} characters (it has {len(text):,})."})
    if "\x00" in text:
        raise ValidationError({field: "Remove the NUL character and send it again."})
    return text


def _own_jobs(organization_id: int, job_ids: Sequence[int]) -> list[GenerationJob]:
    """The cited jobs, all the organisation's own. One that is not (or does not exist) is a 404 for the whole
    submission, told the same way either way: whether another organisation's job exists is not ours to say."""
    wanted = list(dict.fromkeys(job_ids))
    if len(wanted) > MAX_CITED_JOBS:
        raise ValidationError({"cited_jobs": f"Cite at most {MAX_CITED_JOBS} jobs."})
    if any(not isinstance(pk, int) or isinstance(pk, bool) or pk < 1 for pk in wanted):
        raise ValidationError({"cited_jobs": "Cite jobs by their numbers, e.g. 12."})
    jobs = list(
        GenerationJob.objects.filter(pk__in=wanted, organization_id=organization_id).select_related("checkpoint")
    )
    if len(jobs) != len(wanted):
        missing = sorted(set(wanted) - {job.pk for job in jobs})
        raise Http404(f"No job of your organisation numbered {', '.join(f'#{pk}' for pk in missing)}.")
    return sorted(jobs, key=lambda job: job.pk)


@dataclass(frozen=True)
class _Upload:
    file: UploadedFile
    filename: str


def _download_name(name: str | None) -> str:
    """The uploaded name as a download saves it: a plain file name ending in .pdf."""
    base = Path(name or "").name
    try:
        base = get_valid_filename(base)
    except SuspiciousFileOperation:
        base = ""
    if not base or base.startswith("."):
        base = "attachment.pdf"
    if not base.lower().endswith(".pdf"):
        base += ".pdf"
    return base[-150:]


def _check_attachments(
    errors: dict[str, str], attachments: Sequence[UploadedFile], *, already: int = 0
) -> list[_Upload]:
    """PDFs only, each within the limit, at most MAX_ATTACHMENTS per finding; checked by their bytes."""
    if already + len(attachments) > MAX_ATTACHMENTS:
        room = MAX_ATTACHMENTS - already
        errors["attachments"] = f"Attach at most {MAX_ATTACHMENTS} PDFs to a finding" + (
            f" ({already} attached already, so {room} more)." if already else "."
        )
        return []
    limit = settings.FINDING_ATTACHMENT_MAX_BYTES
    checked = []
    for upload in attachments:
        name = _download_name(getattr(upload, "name", None))
        size = upload.size or 0
        if size > limit:
            errors["attachments"] = (
                f"{name} is {size / 2**20:.1f} MB ({size:,} bytes); each PDF may be at most "
                f"{limit / 2**20:.0f} MB ({limit:,} bytes)."
            )
            return []
        upload.seek(0)
        head = upload.read(len(PDF_MAGIC))
        upload.seek(0)
        if size == 0 or head != PDF_MAGIC:
            # The name and the declared type are the sender's to choose; the bytes say what the file is.
            errors["attachments"] = f"{name} is not a PDF (its content does not start with %PDF-). Attach PDFs only."
            return []
        checked.append(_Upload(file=upload, filename=name))
    return checked


def _check_publication(
    errors: dict[str, str], organization_id: int, venue: str, publication_date: date | None
) -> tuple[str, date | None, Agreement | None]:
    """Both or neither; and the paper is shared at least the agreed days before it is published."""
    venue = strip_invisible(venue or "")
    if len(venue) > VENUE_MAX_CHARS:
        errors["publication_venue"] = f"Keep the venue to {VENUE_MAX_CHARS} characters."
        return venue, publication_date, None
    if publication_date is None:
        if venue:
            errors["publication_date"] = "Give the date you intend to publish at this venue."
        return venue, None, None
    if not venue:
        errors["publication_venue"] = "Name where it will be published (a journal, a conference, a preprint server)."
        return venue, publication_date, None
    agreement = active_agreement(organization_id=organization_id)
    if agreement is None:
        errors["publication_date"] = (
            "Your organisation has no active agreement, so there are no agreed terms for a pre-publication review; "
            "ask the lab."
        )
        return venue, publication_date, None
    days = agreement.template_version.prepublication_review_days
    earliest = prepublication_earliest_date(days)
    if publication_date < earliest:
        errors["publication_date"] = (
            f"Papers are shared with the lab at least {days} days before they are published (agreement "
            f"{agreement.reference}); the earliest publication date now is {earliest:%Y-%m-%d}."
        )
    return venue, publication_date, agreement


def prepublication_earliest_date(days: int) -> date:
    """The first day a paper shared now may be published: `days` whole days from now, counted from midnight UTC."""
    return timezone.now().date() + timedelta(days=days + 1)


# --- Attachments on disk -------------------------------------------------------------------------------


def attachment_path(attachment: FindingAttachment) -> Path:
    """Where an attachment's file is; never outside FINDINGS_DIR, whatever the row says."""
    root = Path(settings.FINDINGS_DIR).resolve()
    path = (root / attachment.file_path).resolve()
    if root not in path.parents:
        raise Http404("The attachment's file is not available.")
    return path


@contextlib.contextmanager
def _files_kept_only_on_success() -> Iterator[list[Path]]:
    """Files written inside the block are removed again when it raises: the transaction that would have
    recorded them rolls back, and nothing may be left on disk that no row names."""
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        for folder in {path.parent for path in written}:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: the finding's earlier attachments stay
        raise


def _store(finding: Finding, upload: _Upload, *, actor: User, written: list[Path]) -> FindingAttachment:
    """Write one PDF under FINDINGS_DIR/F-00012/ (temporary name, then renamed) and record it with its SHA-256."""
    folder = Path(settings.FINDINGS_DIR) / finding.reference
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            upload.file.seek(0)
            for chunk in upload.file.chunks():
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        os.chmod(temporary, 0o640)
        sha256 = digest.hexdigest()
        index = finding.attachments.count() + 1
        path = folder / f"{index}-{sha256[:16]}.pdf"
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    written.append(path)
    return FindingAttachment.objects.create(
        finding=finding,
        filename=upload.filename,
        file_path=str(path.relative_to(settings.FINDINGS_DIR)),
        size_bytes=size,
        sha256=sha256,
        uploaded_by=actor,
    )


# --- Submitting --------------------------------------------------------------------------------------


@transaction.atomic
def finding_submit(
    *,
    actor: User,
    title: str,
    category: str,
    checkpoints: Sequence[Checkpoint],
    summary: str,
    cited_job_ids: Sequence[int],
    obligation: Obligation | None = None,
    publication_venue: str = "",
    publication_date: date | None = None,
    attachments: Sequence[UploadedFile] = (),
) -> Finding:
    """Submit a finding for the lab's review. It may fulfil a report obligation, and a planned publication
    opens a pre-publication review the lab answers within the agreed days.

    Refused whole: a cited job that is not the organisation's is a 404, any other bad input a ValidationError
    naming each field; nothing is written either way.
    """
    require_role(actor, *FINDING_AUTHORS)
    organization = actor.membership.organization
    jobs = _own_jobs(organization.pk, cited_job_ids)
    errors: dict[str, str] = {}
    title = _clean_text(errors, "title", title, what="A title", low=3, high=TITLE_MAX_CHARS)
    if category not in Finding.Category.values:
        errors["category"] = "Choose a category from the list."
    checkpoints = list(dict.fromkeys(checkpoints))
    allowed = set(finding_checkpoints_allowed(organization_id=organization.pk).values_list("pk", flat=True))
    if not checkpoints:
        errors["checkpoints"] = "Choose the checkpoints this finding is about."
    elif any(checkpoint.pk not in allowed for checkpoint in checkpoints):
        names = ", ".join(c.slug for c in checkpoints if c.pk not in allowed)
        errors["checkpoints"] = (
            f"Your organisation has never held a grant for {names}; a finding is about checkpoints it has used."
        )
    summary = _clean_text(errors, "summary", summary, what="A summary", low=SUMMARY_MIN_CHARS, high=SUMMARY_MAX_CHARS)
    if obligation is not None and not obligations_fulfillable(organization=organization).filter(pk=obligation.pk):
        errors["obligation"] = "Choose an open report obligation of your organisation, or none."
    venue, publication_date, agreement = _check_publication(
        errors, organization.pk, publication_venue, publication_date
    )
    uploads = _check_attachments(errors, attachments)
    if errors:
        raise ValidationError(errors)

    now = timezone.now()
    days = agreement.template_version.prepublication_review_days if agreement and publication_date else None
    finding = Finding.objects.create(
        organization=organization,
        author=actor,
        title=title,
        category=category,
        summary=summary,
        summary_html=summary_render(summary),
        obligation=obligation,
        created_at=now,
        updated_at=now,
        publication_venue=venue,
        publication_date=publication_date,
        publication_review=Finding.PublicationReview.PENDING if days else Finding.PublicationReview.NONE,
        publication_review_due_at=now + timedelta(days=days) if days else None,
    )
    with _files_kept_only_on_success() as written:
        finding.checkpoints.set(checkpoints)
        finding.cited_jobs.set(jobs)
        stored = [_store(finding, upload, actor=actor, written=written) for upload in uploads]
        if obligation is not None:
            try:
                agreements.obligation_fulfil(
                    actor=actor, obligation=obligation, fulfilment=f"finding {finding.reference}"
                )
            except ValidationError as exc:  # fulfilled a moment ago by another finding
                raise ValidationError({"obligation": exc.messages}) from None
        kept = None
        if agreement is not None and publication_date is not None and days:
            # Shared now, D days or more before publication: the obligation is recorded as met, and when.
            kept = agreements.obligation_record_kept(
                actor=actor,
                agreement=agreement,
                kind=Obligation.Kind.PREPUBLICATION_REVIEW,
                due_at=day_start(publication_date) - timedelta(days=days),
                description=f"Pre-publication review of {finding.reference} ({venue}, {publication_date:%Y-%m-%d})",
                fulfilment=f"finding {finding.reference} shared on {now:%Y-%m-%d}",
            )
        FindingReview.objects.create(
            finding=finding, actor=actor, action=FindingReview.Action.SUBMITTED, created_at=now
        )
        audit_append(
            actor=actor,
            action=events.FINDING_SUBMITTED,
            target=finding,
            data={
                "finding": finding.reference,
                "title": title,
                "category": category,
                "checkpoints": [c.slug for c in checkpoints],
                "cited_jobs": [job.pk for job in jobs],
                "attachments": [{"filename": a.filename, "sha256": a.sha256, "size": a.size_bytes} for a in stored],
                "summary_sha256": hashlib.sha256(summary.encode()).hexdigest(),
                "obligation": obligation.reference if obligation else None,
                "publication": {
                    "venue": venue,
                    "date": publication_date.isoformat(),
                    "review_due_at": finding.publication_review_due_at.isoformat()
                    if finding.publication_review_due_at
                    else None,
                    "obligation": kept.reference if kept else None,
                }
                if publication_date
                else None,
            },
        )
        fulfils = f" It fulfils {obligation.reference} ({obligation.description})." if obligation else ""
        publishes = (
            f" {organization.name} intends to publish it in {venue} on {publication_date:%Y-%m-%d}: answer the "
            f"pre-publication review by {finding.publication_review_due_at:%Y-%m-%d}."
            if publication_date and finding.publication_review_due_at
            else ""
        )
        _notify_lab(
            finding,
            title=f"{organization.name} submitted {finding.reference}: {title}"[:200],
            body=f"{actor.get_full_name()} submitted a finding on {', '.join(c.slug for c in checkpoints)} "
            f"({finding.get_category_display().lower()}).{fulfils}{publishes}",
            occasion="submitted",
        )
    return finding


def _lock(finding: Finding) -> Finding:
    return Finding.objects.select_for_update().select_related("organization").get(pk=finding.pk)


# What a status says in a refusal: "F-00003 is already accepted; it cannot be acknowledged."
_STATE_PHRASES = {
    Finding.Status.SUBMITTED: "waiting for the lab's review",
    Finding.Status.ACKNOWLEDGED: "already acknowledged",
    Finding.Status.CHANGES_REQUESTED: "waiting for the partner's changes",
    Finding.Status.ACCEPTED: "already accepted",
}


@transaction.atomic
def finding_revise(
    *,
    actor: User,
    finding: Finding,
    summary: str,
    attachments: Sequence[UploadedFile] = (),
    title: str | None = None,
    note: str = "",
) -> Finding:
    """The partner's answer to a request for changes: a new summary (and title, more PDFs), back to the lab."""
    require_role(actor, *FINDING_AUTHORS)
    if actor.membership.organization_id != finding.organization_id:
        raise PermissionDenied("Only the finding's own organisation revises it.")
    finding = _lock(finding)
    if finding.status != Finding.Status.CHANGES_REQUESTED:
        raise FindingStateChanged(
            f"{finding.reference} is {_STATE_PHRASES[Finding.Status(finding.status)]}; a finding is revised only "
            "when the lab has asked for changes."
        )
    errors: dict[str, str] = {}
    new_title = finding.title
    if title is not None:
        new_title = _clean_text(errors, "title", title, what="A title", low=3, high=TITLE_MAX_CHARS)
    summary = _clean_text(errors, "summary", summary, what="A summary", low=SUMMARY_MIN_CHARS, high=SUMMARY_MAX_CHARS)
    uploads = _check_attachments(errors, attachments, already=finding.attachments.count())
    try:
        note = _clean_comment(note, required=False, field="note", what="a note")
    except ValidationError as exc:
        errors.update({field: messages[0] for field, messages in exc.message_dict.items()})
    if errors:
        raise ValidationError(errors)
    now = timezone.now()
    previous_sha256 = hashlib.sha256(finding.summary.encode()).hexdigest()
    finding.title = new_title
    finding.summary = summary
    finding.summary_html = summary_render(summary)
    finding.status = Finding.Status.SUBMITTED
    finding.updated_at = now
    finding.save(update_fields=["title", "summary", "summary_html", "status", "updated_at"])
    with _files_kept_only_on_success() as written:
        stored = [_store(finding, upload, actor=actor, written=written) for upload in uploads]
        review = FindingReview.objects.create(
            finding=finding, actor=actor, action=FindingReview.Action.RESUBMITTED, comment=note, created_at=now
        )
        audit_append(
            actor=actor,
            action=events.FINDING_RESUBMITTED,
            target=finding,
            data={
                "finding": finding.reference,
                "title": new_title,
                "summary_sha256": hashlib.sha256(summary.encode()).hexdigest(),
                "previous_summary_sha256": previous_sha256,
                "attachments_added": [
                    {"filename": a.filename, "sha256": a.sha256, "size": a.size_bytes} for a in stored
                ],
                "note": note,
            },
        )
        _notify_lab(
            finding,
            title=f"{finding.organization.name} revised {finding.reference}: {new_title}"[:200],
            body=f"{actor.get_full_name()} made the changes you asked for and submitted it again."
            + (f" Their note: {note}" if note else ""),
            occasion=f"resubmitted:{review.pk}",
        )
    return finding


# --- The lab's review ----------------------------------------------------------------------------------

# action -> (the statuses it may start from, the status it leads to, the history's entry, how a refusal says it)
REVIEW_ACTIONS: dict[str, tuple[tuple[str, ...], str, str, str]] = {
    "acknowledge": (
        (Finding.Status.SUBMITTED,),
        Finding.Status.ACKNOWLEDGED,
        FindingReview.Action.ACKNOWLEDGED,
        "acknowledged",
    ),
    "request_changes": (
        (Finding.Status.SUBMITTED, Finding.Status.ACKNOWLEDGED),
        Finding.Status.CHANGES_REQUESTED,
        FindingReview.Action.CHANGES_REQUESTED,
        "sent back for changes",
    ),
    "accept": (
        (Finding.Status.SUBMITTED, Finding.Status.ACKNOWLEDGED),
        Finding.Status.ACCEPTED,
        FindingReview.Action.ACCEPTED,
        "accepted",
    ),
}


@transaction.atomic
def finding_review(*, actor: User, finding: Finding, action: str, comment: str = "") -> Finding:
    """Legal or a lab admin acknowledges a finding, asks for changes (with a comment) or accepts it.

    The row is locked first: of two reviewers at once, the second finds the state already moved and is
    refused with FindingStateChanged (409), having changed nothing.
    """
    require_role(actor, *FINDING_REVIEWERS)
    if action not in REVIEW_ACTIONS:
        raise ValidationError({"action": "Choose acknowledge, request changes or accept."})
    sources, target, entry, done = REVIEW_ACTIONS[action]
    comment = _clean_comment(comment, required=action == "request_changes", field="comment", what="what should change")
    finding = _lock(finding)
    if finding.status not in sources:
        raise FindingStateChanged(
            f"{finding.reference} is {_STATE_PHRASES[Finding.Status(finding.status)]}; it cannot be {done}."
        )
    previous = finding.status
    now = timezone.now()
    finding.status = target
    finding.updated_at = now
    finding.save(update_fields=["status", "updated_at"])
    review = FindingReview.objects.create(finding=finding, actor=actor, action=entry, comment=comment, created_at=now)
    audit_append(
        actor=actor,
        action=events.FINDING_REVIEWED,
        target=finding,
        data={"finding": finding.reference, "action": action, "from": previous, "to": target, "comment": comment},
    )
    who = f"{actor.get_full_name()} ({actor.membership.get_role_display()} at the lab)"
    what = f"{finding.reference} \u201c{finding.title}\u201d"
    said = f": {comment}" if comment else "."
    title, body = {
        "acknowledge": (f"The lab acknowledged {finding.reference}", f"{who} acknowledged {what}{said}"),
        "request_changes": (
            f"The lab asks for changes to {finding.reference}",
            f"{who} asks for changes to {what}{said} Revise it from the finding's page.",
        ),
        "accept": (f"The lab accepted {finding.reference}", f"{who} accepted {what}{said}"),
    }[action]
    _notify_organization(finding, review, title=title, body=body)
    return finding


@transaction.atomic
def finding_publication_review(*, actor: User, finding: Finding, objection: bool, reasons: str = "") -> Finding:
    """The lab's answer to a planned publication: no objection, or an objection with its reasons."""
    require_role(actor, *FINDING_REVIEWERS)
    reasons = _clean_comment(reasons, required=objection, field="reasons", what="the reasons for the objection")
    finding = _lock(finding)
    if finding.publication_review != Finding.PublicationReview.PENDING:
        state = (
            f"already answered ({finding.get_publication_review_display().lower()})"
            if finding.publication_review
            else "not planned for publication"
        )
        raise FindingStateChanged(f"{finding.reference} is {state}; there is no pre-publication review to answer.")
    now = timezone.now()
    answer = Finding.PublicationReview.OBJECTION if objection else Finding.PublicationReview.NO_OBJECTION
    finding.publication_review = answer
    finding.publication_reviewed_at = now
    finding.publication_reviewed_by = actor
    finding.publication_review_reasons = reasons
    finding.updated_at = now
    finding.save(
        update_fields=[
            "publication_review",
            "publication_reviewed_at",
            "publication_reviewed_by",
            "publication_review_reasons",
            "updated_at",
        ]
    )
    entry = FindingReview.Action.OBJECTION if objection else FindingReview.Action.NO_OBJECTION
    review = FindingReview.objects.create(finding=finding, actor=actor, action=entry, comment=reasons, created_at=now)
    due = finding.publication_review_due_at
    audit_append(
        actor=actor,
        action=events.FINDING_PUBLICATION_REVIEWED,
        target=finding,
        data={
            "finding": finding.reference,
            "answer": answer,
            "reasons": reasons,
            "venue": finding.publication_venue,
            "date": finding.publication_date.isoformat() if finding.publication_date else None,
            "due_at": due.isoformat() if due else None,
            "late": bool(due and now > due),
        },
    )
    where = f"{finding.publication_venue} on {finding.publication_date:%Y-%m-%d}" if finding.publication_date else ""
    _notify_organization(
        finding,
        review,
        title=(
            f"The lab objects to publishing {finding.reference}"
            if objection
            else f"No objection to publishing {finding.reference}"
        ),
        body=(
            f"{actor.get_full_name()} objected to publishing \u201c{finding.title}\u201d in {where}: {reasons}"
            if objection
            else f"{actor.get_full_name()} has no objection to publishing \u201c{finding.title}\u201d in {where}."
        ),
    )
    return finding


# --- Attachments: downloads are audited ------------------------------------------------------------------


def finding_attachment_download(*, actor: User, attachment: FindingAttachment) -> FindingAttachment:
    """Record that `actor` took a copy of an attachment. Who may is the selector's (finding_attachment_get)."""
    audit_append(
        actor=actor,
        action=events.FINDING_ATTACHMENT_DOWNLOADED,
        target=attachment.finding,
        data={
            "finding": attachment.finding.reference,
            "attachment": attachment.pk,
            "filename": attachment.filename,
            "sha256": attachment.sha256,
        },
    )
    return attachment


# --- Notices ---------------------------------------------------------------------------------------------


def _notify_lab(finding: Finding, *, title: str, body: str, occasion: str) -> None:
    notifications_send(
        users=User.objects.filter(is_active=True, membership__role__in=FINDING_REVIEWERS),
        kind=NotificationKind.FINDING_SUBMITTED,
        title=title,
        body=body,
        url=reverse("finding_detail", args=[finding.pk]),
        dedupe_key=f"finding.{occasion}:{finding.pk}",
    )


def _notify_organization(finding: Finding, review: FindingReview, *, title: str, body: str) -> None:
    notifications_send(
        users=User.objects.filter(
            is_active=True, membership__organization_id=finding.organization_id, membership__role__in=PARTNER_ROLES
        ),
        kind=NotificationKind.FINDING_REVIEWED,
        title=title,
        body=body,
        url=reverse("finding_detail", args=[finding.pk]),
        dedupe_key=f"finding.reviewed:{review.pk}",
    )
