"""Making, exporting and downloading sealed records.

Rendering takes seconds, so it never runs inside a transaction: a record is claimed with a
conditional UPDATE, rendered and sealed outside, then finished (row + audit event) atomically.
WeasyPrint and pyHanko take seconds to import: records.pdf is imported only inside the functions
that render or seal, so the web tier does not pay for them at start.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import Organization, User
from accounts.permissions import require_role
from accounts.selectors import lab_organization
from agreements.models import Agreement
from audit import events
from audit.models import GENESIS_HASH, ChainHead
from audit.selectors import audit_chain_verify
from audit.services import audit_append
from core.tasks import task_send_on_commit
from records import selectors
from records.models import SealedRecord
from research.models import ReleaseDecision

if TYPE_CHECKING:
    from records.pdf import PdfAttachment, Sealed

logger = logging.getLogger(__name__)
_PROGRESS_EVERY = 0.5  # seconds between progress writes


def record_seal_agreement(*, agreement_id: int, occasion: str, actor: User | None = None) -> SealedRecord | None:
    """Render, seal and store an agreement's record when it becomes active or ends.

    Once per (agreement, occasion): a redelivered task finds the record made and does nothing.
    Agreements that never became active (declined, voided, expired unsigned) get no record.
    """
    if occasion not in SealedRecord.Occasion.values:
        raise ValidationError(f"Unknown occasion {occasion!r}; use activated or ended.")
    agreement = Agreement.objects.select_related("organization").filter(pk=agreement_id).first()
    if agreement is None or agreement.activated_at is None:
        return None
    if occasion == SealedRecord.Occasion.ENDED and agreement.ended_at is None:
        return None
    record, _ = SealedRecord.objects.get_or_create(
        kind=SealedRecord.Kind.AGREEMENT_RECORD,
        agreement=agreement,
        occasion=occasion,
        defaults={"organization": agreement.organization, "created_by": actor if getattr(actor, "pk", None) else None},
    )
    if not _record_claim(record, retry_failed=True):
        record.refresh_from_db()
        return record
    return _record_produce(record, actor=actor, build=_agreement_record_build)


def record_seal_stage_review(*, decision_id: int, actor: User | None = None) -> SealedRecord | None:
    """Render, seal and store a release decision's stage review record, once per decision.

    Queued on commit by research.services.releases.release_decide; a redelivered task finds the record
    made (or being made) and does nothing. A failed one is tried again.
    """
    decision = ReleaseDecision.objects.select_related("decided_by").filter(pk=decision_id).first()
    if decision is None:
        return None
    record, _ = SealedRecord.objects.get_or_create(
        kind=SealedRecord.Kind.STAGE_REVIEW_RECORD,
        release_decision=decision,
        defaults={"created_by": actor if getattr(actor, "pk", None) else decision.decided_by},
    )
    if not _record_claim(record, retry_failed=True):
        record.refresh_from_db()
        return record
    return _record_produce(record, actor=actor, build=_stage_review_record_build)


def stage_review_record_request(*, actor: User, decision: ReleaseDecision) -> None:
    """Queue sealing for a decision whose record is missing or failed (lab roles)."""
    require_role(actor, *selectors.RECORD_EXPORTERS)
    if SealedRecord.objects.filter(
        kind=SealedRecord.Kind.STAGE_REVIEW_RECORD,
        release_decision=decision,
        status__in=[SealedRecord.Status.READY, SealedRecord.Status.RUNNING],
    ).exists():
        raise ValidationError(f"{decision.reference}'s record is already sealed (or being sealed).")
    task_send_on_commit("records.tasks.seal_stage_review", decision.pk, actor.pk)


def agreement_record_request(*, actor: User, agreement: Agreement) -> list[str]:
    """Queue sealing for an active or ended agreement's missing records; returns the occasions queued."""
    require_role(actor, *selectors.RECORD_EXPORTERS)
    if agreement.activated_at is None:
        raise ValidationError(f"{agreement.reference} never became active; only completed agreements are sealed.")
    occasions = [SealedRecord.Occasion.ACTIVATED] + ([SealedRecord.Occasion.ENDED] if agreement.ended_at else [])
    done = set(
        SealedRecord.objects.filter(
            kind=SealedRecord.Kind.AGREEMENT_RECORD,
            agreement=agreement,
            status__in=[SealedRecord.Status.READY, SealedRecord.Status.RUNNING],
        ).values_list("occasion", flat=True)
    )
    missing = [occasion for occasion in occasions if occasion not in done]
    if not missing:
        raise ValidationError(f"{agreement.reference}'s records are already sealed (or being sealed).")
    for occasion in missing:
        task_send_on_commit("records.tasks.seal_agreement_record", agreement.pk, str(occasion), actor.pk)
    return [str(occasion) for occasion in missing]


def record_export_request(
    *, actor: User, kind: str, organization: Organization | None = None, filters: dict[str, Any] | None = None
) -> SealedRecord:
    """Queue an evidence bundle or an audit log export (CSV or PDF); lab roles only, and audited."""
    require_role(actor, *selectors.RECORD_EXPORTERS)
    filters = _normalise_filters(filters or {}) if kind != SealedRecord.Kind.EVIDENCE_BUNDLE else {}
    if kind == SealedRecord.Kind.EVIDENCE_BUNDLE:
        if organization is None or organization.kind != Organization.Kind.PARTNER:
            raise ValidationError({"organization": "Choose the partner organisation to export evidence for."})
    elif kind == SealedRecord.Kind.AUDIT_LOG_PDF:
        count = selectors.audit_log_export_events(filters).count()
        if count > selectors.AUDIT_LOG_PDF_MAX_EVENTS:
            raise ValidationError(
                f"These filters match {count:,} events; a PDF holds at most "
                f"{selectors.AUDIT_LOG_PDF_MAX_EVENTS:,}. Narrow the filters, or export CSV."
            )
        organization = None
    elif kind == SealedRecord.Kind.AUDIT_LOG_CSV:
        organization = None
    else:
        raise ValidationError(f"Unknown export {kind!r}.")
    with transaction.atomic():
        record = SealedRecord.objects.create(kind=kind, organization=organization, filters=filters, created_by=actor)
        audit_append(
            actor=actor,
            action=events.RECORD_EXPORT_REQUESTED,
            target=record,
            organization=organization,
            data={"kind": kind, "organization": organization.name if organization else None, "filters": filters},
        )
        task_send_on_commit("records.tasks.run_record_export", record.pk)
    return record


def record_export_run(*, record_id: int) -> SealedRecord | None:
    """Make a queued export: the task's body. A second delivery finds it claimed and returns."""
    record = SealedRecord.objects.select_related("organization", "created_by").filter(pk=record_id).first()
    if record is None or record.is_sealed_record:
        return None
    if not _record_claim(record, retry_failed=False):
        return record
    if record.kind == SealedRecord.Kind.AUDIT_LOG_CSV:
        return _record_produce(record, actor=record.created_by, build=None, csv=True)
    build = _bundle_build if record.kind == SealedRecord.Kind.EVIDENCE_BUNDLE else _audit_log_build
    return _record_produce(record, actor=record.created_by, build=build)


@transaction.atomic
def record_download(*, actor: User, record: SealedRecord) -> SealedRecord:
    """Audit that `actor` took a copy of `record` (who exported what). Scoping is the selector's."""
    audit_append(
        actor=actor,
        action=events.RECORD_DOWNLOADED,
        target=record,
        organization=record.organization,
        data={"kind": record.kind, "sha256": record.sha256, "filename": record.filename, "subject": record.subject},
    )
    return record


def record_key_generate(*, actor: User | None = None, force: bool = False) -> str:
    """Make a development sealing key and self-signed certificate at RECORDS_KEY_PATH / RECORDS_CERT_PATH."""
    from records import pdf

    key_path, cert_path = pdf.seal_key_paths()
    if not force and (key_path.exists() or cert_path.exists()):
        raise ValidationError(f"A sealing key already exists at {key_path}; pass --force to replace it.")
    cert_sha256 = pdf.generate_seal_key(key_path, cert_path)
    _audit_key_generated(actor, cert_sha256)
    return cert_sha256


@transaction.atomic
def _audit_key_generated(actor: User | None, cert_sha256: str) -> None:
    from records import pdf

    key_path, cert_path = pdf.seal_key_paths()
    audit_append(
        actor=actor,
        action=events.RECORD_KEY_GENERATED,
        data={"cert_sha256": cert_sha256, "cert_path": str(cert_path), "key_path": str(key_path)},
    )


def _normalise_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """The audit page's cleaned filters as JSON-safe values (ids and ISO dates)."""
    organization = filters.get("organization") or filters.get("organization_id")
    out = {
        "organization_id": getattr(organization, "pk", organization) or None,
        "actor_email": (filters.get("actor") or filters.get("actor_email") or "").strip(),
        "action": filters.get("action") or "",
        "created_after": _iso(filters.get("created_after")),
        "created_before": _iso(filters.get("created_before")),
    }
    return {key: value for key, value in out.items() if value}


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else (value or "")


def _record_claim(record: SealedRecord, *, retry_failed: bool) -> bool:
    """Take the record for this worker; False when another run has it or it is done."""
    stale = timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 60)
    claimable = models.Q(status=SealedRecord.Status.PENDING) | models.Q(
        status=SealedRecord.Status.RUNNING, started_at__lt=stale
    )
    if retry_failed:
        claimable |= models.Q(status=SealedRecord.Status.FAILED)
    claimed = (
        SealedRecord.objects.filter(claimable, pk=record.pk).update(
            status=SealedRecord.Status.RUNNING,
            started_at=timezone.now(),
            progress=1,
            progress_note="Starting",
            error="",
        )
        == 1
    )
    if claimed:
        record.refresh_from_db()
    return claimed


class _Progress:
    """Writes an export's percent done and a note, at most every half second."""

    def __init__(self, record: SealedRecord) -> None:
        self.record_id = record.pk
        self.expected_pages = 1
        self.last = 0.0

    def __call__(self, percent: int, note: str, *, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self.last < _PROGRESS_EVERY:
            return
        self.last = now
        SealedRecord.objects.filter(pk=self.record_id, status=SealedRecord.Status.RUNNING).update(
            progress=max(1, min(99, percent)), progress_note=note[:200]
        )

    def page(self, number: int) -> None:
        share = min(1.0, number / max(1, self.expected_pages))
        self(10 + int(75 * share), f"Laying out page {number}", force=False)


@dataclass
class _Built:
    """What a record's builder returns: the HTML, its attachments and what the record row keeps."""

    html: str
    attachments: list[PdfAttachment]
    filename: str
    reason: str
    chain_head_seq: int
    chain_head_hash: str
    expected_pages: int = 1
    audit_data: dict[str, Any] = dataclass_field(default_factory=dict)


def _record_produce(
    record: SealedRecord,
    *,
    actor: User | None,
    build: Callable[[SealedRecord, _Progress], _Built] | None,
    csv: bool = False,
) -> SealedRecord:
    """Render, seal, store and finish one claimed record; a failure marks it failed, audited."""
    from records import pdf

    progress = _Progress(record)
    try:
        if csv:
            content, filename, head = _audit_log_csv(record, progress)
            _record_finish(record, actor=actor, content=content, filename=filename, head=head, sealed=None)
            return record
        generated = pdf.ensure_seal_key()
        if generated:
            _audit_key_generated(None, generated)
        progress(3, "Gathering the data")
        assert build is not None  # only a CSV export has no builder
        built = build(record, progress)
        progress.expected_pages = built.expected_pages
        progress(10, "Laying out pages")
        rendered = pdf.render_pdf(built.html, attachments=built.attachments, on_page=progress.page)
        progress(88, f"Sealing {rendered.pages} page{'s' if rendered.pages != 1 else ''}")
        sealed = pdf.seal_pdf(rendered.pdf, reason=built.reason)
        progress(95, "Storing")
        _record_finish(
            record,
            actor=actor,
            content=sealed.pdf,
            filename=built.filename,
            head=(built.chain_head_seq, built.chain_head_hash),
            sealed=sealed,
            unsealed_sha256=pdf.sha256_bytes(rendered.pdf),
            extra=built.audit_data,
        )
    except pdf.RecordError as exc:
        _record_fail(record, actor=actor, message=str(exc))
    except Exception:
        logger.exception("Making %s failed", record)
        _record_fail(record, actor=actor, message="An internal error stopped it; the server log has the details.")
    return record


def _record_store(record: SealedRecord, content: bytes, sha256: str, suffix: str) -> str:
    """Write the file once under RECORDS_DIR (atomically: a reader never sees half a file)."""
    now = timezone.now()
    relative = Path(record.kind) / f"{now:%Y}" / f"{now:%m}" / f"{record.pk}-{sha256[:16]}{suffix}"
    path = Path(settings.RECORDS_DIR) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".part")
    temporary.write_bytes(content)
    temporary.chmod(0o640)
    os.replace(temporary, path)
    return str(relative)


def _record_finish(
    record: SealedRecord,
    *,
    actor: User | None,
    content: bytes,
    filename: str,
    head: tuple[int, str],
    sealed: Sealed | None,
    unsealed_sha256: str = "",
    extra: dict[str, Any] | None = None,
) -> None:
    sha256 = hashlib.sha256(content).hexdigest()
    file_path = _record_store(record, content, sha256, ".pdf" if sealed is not None else ".csv")
    with transaction.atomic():
        record.status = SealedRecord.Status.READY
        record.progress, record.progress_note = 100, "Ready"
        record.file_path, record.filename, record.size_bytes = file_path, filename, len(content)
        record.sha256, record.unsealed_sha256 = sha256, unsealed_sha256
        record.cert_sha256 = sealed.cert_sha256 if sealed is not None else ""
        record.chain_head_seq, record.chain_head_hash = head
        record.sealed_at = sealed.sealed_at if sealed is not None else timezone.now()
        record.save()
        data = {
            "kind": record.kind,
            "subject": record.subject,
            "sha256": sha256,
            "unsealed_sha256": unsealed_sha256,
            "cert_sha256": record.cert_sha256,
            "chain_head_seq": head[0],
            "filename": filename,
            **(extra or {}),
        }
        action = events.RECORD_SEALED if record.is_sealed_record else events.RECORD_EXPORTED
        audit_append(actor=actor, action=action, target=record, organization=record.organization, data=data)


def _record_fail(record: SealedRecord, *, actor: User | None, message: str) -> None:
    with transaction.atomic():
        SealedRecord.objects.filter(pk=record.pk).update(
            status=SealedRecord.Status.FAILED, error=message[:2000], progress_note="Failed"
        )
        record.refresh_from_db()
        action = events.RECORD_SEAL_FAILED if record.is_sealed_record else events.RECORD_EXPORT_FAILED
        audit_append(
            actor=actor,
            action=action,
            target=record,
            organization=record.organization,
            data={"kind": record.kind, "error": message[:500]},
        )


def _pdf_context(**context: Any) -> dict[str, Any]:
    from records import pdf

    lab = lab_organization()
    return {
        "lab_name": lab.legal_name if lab else "the Lab",
        "prepared_at": timezone.now(),
        "cert_sha256": pdf.seal_cert_sha256(),
        "timestamped": bool(settings.RECORDS_TSA_URL),
        "verify_url": settings.SITE_URL + reverse("record_verify"),
        **context,
    }


def _agreement_record_build(record: SealedRecord, progress: _Progress) -> _Built:
    from records import pdf

    assert record.agreement_id is not None  # an agreement record names its agreement
    data = selectors.agreement_record_data(record.agreement_id)
    agreement = data["agreement"]
    label = record.get_occasion_display()
    html = render_to_string(
        "records/pdf/agreement_record.html",
        _pdf_context(
            **data,
            kicker="Sealed agreement record",
            title=f"{agreement.reference}: model-sharing agreement",
            subtitle=f"{agreement.organization.legal_name} · {label}",
            occasion_label=label,
        ),
    )
    events_json = selectors.audit_events_json(data["events"])
    return _Built(
        html=html,
        attachments=[pdf.PdfAttachment("agreement-events.json", events_json, f"Audit events of {agreement.reference}")],
        filename=f"{agreement.reference}-record-{record.occasion}.pdf",
        reason=f"{agreement.reference} {label.lower()}",
        chain_head_seq=data["chain_head_seq"],
        chain_head_hash=data["chain_head_hash"],
        expected_pages=3 + len(agreement.document_html) // 6000,
        audit_data={"agreement": agreement.reference, "occasion": record.occasion, "events": len(data["events"])},
    )


def _stage_review_record_build(record: SealedRecord, progress: _Progress) -> _Built:
    from records import pdf

    assert record.release_decision_id is not None  # a stage review record names its decision
    data = selectors.stage_review_record_data(record.release_decision_id)
    decision = data["decision"]
    checkpoint = decision.checkpoint
    label = decision.get_decision_display()
    html = render_to_string(
        "records/pdf/stage_review_record.html",
        _pdf_context(
            **data,
            kicker="Sealed stage review record",
            title=f"{decision.reference}: release decision on {checkpoint.slug}",
            subtitle=f"{checkpoint.display_name} ({checkpoint.size_label}) · {label}",
        ),
    )
    attachment = json.dumps(
        {
            "decision": {
                "reference": decision.reference,
                "checkpoint": checkpoint.slug,
                "decision": decision.decision,
                "rationale": decision.rationale,
                "decided_by": decision.decided_by.email,
                "decided_at": decision.decided_at.isoformat(),
                "supersedes": decision.supersedes.reference if decision.supersedes else None,
                "partners": [o.name for o in decision.partners.all()],
                "amendments": [a.reference for a in decision.amendments.all()],
            },
            "evidence": data["evidence"],
            "evidence_canonical_json": data["evidence_canonical"],
            "evidence_sha256": decision.evidence_sha256,
            "events": json.loads(selectors.audit_events_json(data["events"]))["events"],
        },
        indent=1,
        ensure_ascii=False,
    ).encode()
    return _Built(
        html=html,
        attachments=[
            pdf.PdfAttachment(
                "release-decision.json", attachment, f"{decision.reference}: the decision, its evidence and events"
            )
        ],
        filename=f"{decision.reference}-{checkpoint.slug}-stage-review.pdf",
        reason=f"{decision.reference} {label.lower()} ({checkpoint.slug})",
        chain_head_seq=data["chain_head_seq"],
        chain_head_hash=data["chain_head_hash"],
        expected_pages=3,
        audit_data={
            "release_decision": decision.reference,
            "checkpoint": checkpoint.slug,
            "evidence_sha256": decision.evidence_sha256,
            "events": len(data["events"]),
        },
    )


def _bundle_build(record: SealedRecord, progress: _Progress) -> _Built:
    from records import pdf

    assert record.organization_id is not None  # a bundle names its organisation
    data = selectors.evidence_bundle_data(record.organization_id)
    organization = data["organization"]
    now = timezone.now()
    html = render_to_string(
        "records/pdf/evidence_bundle.html",
        _pdf_context(
            **data,
            exported_by=record.created_by,
            kicker="Evidence bundle",
            title=f"Evidence: {organization.legal_name}",
            subtitle=(
                "Agreements, certificates, obligations, findings, incidents, release decisions, grant history "
                f"and job ledger, as of {now:%Y-%m-%d %H:%M} UTC"
            ),
        ),
    )
    return _Built(
        html=html,
        attachments=[
            pdf.PdfAttachment(
                "evidence-ledger.json",
                selectors.evidence_ledger_json(data),
                "Obligations, findings, incidents, release decisions, grant history and job ledger",
            )
        ],
        filename=f"evidence-{slugify(organization.name)}-{now:%Y%m%dT%H%MZ}.pdf",
        reason=f"Evidence bundle for {organization.name}",
        chain_head_seq=data["chain_head_seq"],
        chain_head_hash=data["chain_head_hash"],
        expected_pages=3
        + 3 * len(data["certificates"])
        + len(data["grants"]) // 25
        + len(data["ledger"]) // 6
        + (len(data["obligations"]) + len(data["findings"]) + len(data["incidents"])) // 15,
        audit_data={
            "organization": organization.name,
            "agreements": len(data["certificates"]),
            "grants": len(data["grants"]),
            "jobs": len(data["ledger"]),
            "obligations": len(data["obligations"]),
            "findings": len(data["findings"]),
            "incidents": len(data["incidents"]),
            "release_decisions": len(data["release_decisions"]),
        },
    )


def _audit_log_build(record: SealedRecord, progress: _Progress) -> _Built:
    report = audit_chain_verify()
    progress(6, "Checked the audit chain")
    rows = list(selectors.audit_log_export_events(record.filters))
    for event in rows:
        # For the template only; not a model field.
        event.data_json = json.dumps(event.data, ensure_ascii=False, sort_keys=True) if event.data else ""  # type: ignore[attr-defined]
    now = timezone.now()
    html = render_to_string(
        "records/pdf/audit_log.html",
        _pdf_context(
            events=rows,
            first_seq=rows[0].seq if rows else None,
            last_seq=rows[-1].seq if rows else None,
            filters=selectors.audit_filters_described(record.filters),
            chain_report=report,
            chain_head_seq=report.head_seq,
            chain_head_hash=report.head_hash,
            exported_by=record.created_by,
            kicker="Audit log export",
            title="ModelPact audit log",
            subtitle=f"Exported {now:%Y-%m-%d %H:%M} UTC · chain {'intact' if report.ok else 'BROKEN'} at export",
        ),
    )
    return _Built(
        html=html,
        attachments=[],
        filename=f"audit-log-{now:%Y%m%dT%H%M%SZ}.pdf",
        reason="Audit log export",
        chain_head_seq=report.head_seq,
        chain_head_hash=report.head_hash,
        expected_pages=2 + len(rows) // 30,
        audit_data={"filters": record.filters, "events": len(rows), "chain_ok": report.ok},
    )


_CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> str:
    # Spreadsheets run cells that start like a formula; a quote keeps them text.
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_CSV_FORMULA_START) else text


def _audit_log_csv(record: SealedRecord, progress: _Progress) -> tuple[bytes, str, tuple[int, str]]:
    head = ChainHead.objects.filter(pk=1).first()
    rows = selectors.audit_log_export_events(record.filters)
    total = max(1, rows.count())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = ["seq", "time_utc", "action", "actor_email", "organization", "target_type", "target_id"]
    writer.writerow([*columns, "target_repr", "ip", "data", "prev_hash", "hash"])
    for done, event in enumerate(rows.iterator(chunk_size=2000), start=1):
        writer.writerow(
            [
                event.seq,
                event.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
                event.action,
                _csv_cell(event.actor_email),
                _csv_cell(event.organization.name if event.organization else ""),
                event.target_type,
                _csv_cell(event.target_id),
                _csv_cell(event.target_repr),
                event.ip or "",
                json.dumps(event.data, ensure_ascii=False, sort_keys=True) if event.data else "",
                event.prev_hash,
                event.hash,
            ]
        )
        if done % 500 == 0:
            progress(5 + int(90 * done / total), f"Wrote {done:,} of {total:,} events", force=False)
    filename = f"audit-log-{timezone.now():%Y%m%dT%H%M%SZ}.csv"
    return buffer.getvalue().encode(), filename, (head.seq if head else 0, head.hash if head else GENESIS_HASH)
