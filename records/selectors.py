"""Reading sealed records (scoping, contents, verification) and the audit log as the auditor's
workspace shows it: the filtered event list and what an export of it holds."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Prefetch, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from accounts.models import LAB_ROLES, Organization, Role, User
from accounts.permissions import require_role, role_of
from agreements.models import AccessGrant, Agreement, Obligation, Signature
from agreements.selectors import agreement_document_as_signed, agreement_get, agreement_signatures
from audit import events
from audit.models import GENESIS_HASH, AuditEvent, ChainHead
from core.filters import created_within
from inference.models import GenerationJob, Sample
from models_registry.models import Checkpoint
from records.models import SealedRecord
from research.models import Finding, FindingAttachment, FindingReview, Incident, ReleaseDecision
from research.selectors.releases import evidence_canonical_json, evidence_sha256, release_decision_effects

AUDIT_READERS = (Role.LAB_ADMIN, Role.LEGAL, Role.AUDITOR)


def audit_event_list(
    *,
    user: User,
    organization_id: int | None = None,
    actor_email: str | None = None,
    action: str | None = None,
    created_after: date | None = None,
    created_before: date | None = None,
) -> QuerySet[AuditEvent]:
    """Events newest first; only lab admins, legal and auditors may read the log."""
    require_role(user, *AUDIT_READERS)
    events = AuditEvent.objects.select_related("organization").order_by("-seq")
    return _audit_events_filtered(events, organization_id, actor_email, action, created_after, created_before)


def _audit_events_filtered(
    events: QuerySet[AuditEvent],
    organization_id: int | None,
    actor_email: str | None,
    action: str | None,
    created_after: date | None,
    created_before: date | None,
) -> QuerySet[AuditEvent]:
    """The audit log's filters, as the page, the API and an export apply them. An action ending in a
    dot is a prefix (`job.`); dates are UTC days, both included."""
    if organization_id:
        events = events.filter(organization_id=organization_id)
    if actor_email:
        events = events.filter(actor_email__iexact=actor_email.strip())
    if action:
        events = events.filter(action__startswith=action) if action.endswith(".") else events.filter(action=action)
    return created_within(events, created_after, created_before)


# --- Sealed records: who may read which, what goes into them, and verification -----------------

RECORD_EXPORTERS = AUDIT_READERS
EXPORT_KINDS = (
    SealedRecord.Kind.EVIDENCE_BUNDLE,
    SealedRecord.Kind.AUDIT_LOG_PDF,
    SealedRecord.Kind.AUDIT_LOG_CSV,
)
AUDIT_LOG_PDF_MAX_EVENTS = 5000

# A grant's audit events name it by its model's label, which changed when grants moved from
# models_registry to agreements (same table, same ids): older events keep the old label.
GRANT_TARGET_TYPES = ("agreements.accessgrant", "models_registry.accessgrant")


def sealed_record_list(*, user: User) -> QuerySet[SealedRecord]:
    """Every record and export, newest first: lab roles only."""
    require_role(user, *RECORD_EXPORTERS)
    return SealedRecord.objects.select_related(
        "agreement", "organization", "created_by", "release_decision__checkpoint"
    ).order_by("-created_at", "-pk")


def sealed_record_get(*, user: User, pk: int) -> SealedRecord:
    """One record. Partners see only their own organisation's agreement records (others are 404);
    exports are for lab roles (403 to partners)."""
    role = role_of(user)
    if role is None:
        raise Http404
    record = (
        SealedRecord.objects.select_related("agreement", "organization", "created_by", "release_decision__checkpoint")
        .filter(pk=pk)
        .first()
    )
    if record is None:
        raise Http404
    if role in LAB_ROLES:
        return record
    if record.kind != SealedRecord.Kind.AGREEMENT_RECORD:
        require_role(user, *RECORD_EXPORTERS)
    if record.agreement is None or record.agreement.organization_id != user.membership.organization_id:
        raise Http404
    return record


def agreement_record_latest(*, user: User, agreement_pk: int) -> tuple[Agreement, SealedRecord | None]:
    """The agreement (scoped as on its own page) and its newest ready record, if any."""
    agreement = agreement_get(user=user, pk=agreement_pk)
    record = (
        SealedRecord.objects.filter(
            kind=SealedRecord.Kind.AGREEMENT_RECORD, agreement=agreement, status=SealedRecord.Status.READY
        )
        .order_by("-sealed_at", "-pk")
        .first()
    )
    return agreement, record


def agreement_records_pending(*, user: User) -> QuerySet[Agreement]:
    """Agreements that were activated but have no sealed record yet (e.g. sealed before this feature)."""
    require_role(user, *RECORD_EXPORTERS)
    sealed = SealedRecord.objects.filter(kind=SealedRecord.Kind.AGREEMENT_RECORD, status=SealedRecord.Status.READY)
    return (
        Agreement.objects.filter(activated_at__isnull=False)
        .exclude(pk__in=sealed.values("agreement_id"))
        .select_related("organization")
        .order_by("-activated_at")
    )


def record_export_organizations() -> QuerySet[Organization]:
    return Organization.objects.filter(kind=Organization.Kind.PARTNER).order_by("name")


def agreement_record_events(agreement: Agreement) -> list[AuditEvent]:
    """The agreement's own events and those of the grants it created, in chain order."""
    grant_ids = [str(pk) for pk in AccessGrant.objects.filter(agreement=agreement).values_list("pk", flat=True)]
    about = Q(target_type="agreements.agreement", target_id=str(agreement.pk))
    if grant_ids:
        about |= Q(target_type__in=GRANT_TARGET_TYPES, target_id__in=grant_ids)
    return list(AuditEvent.objects.filter(about).order_by("seq"))


def audit_events_json(events: list[AuditEvent]) -> bytes:
    """Events as embedded in a record: each event's hashed payload plus its hashes, so a reader can
    recompute every hash from the attachment alone."""
    rows = [
        {**json.loads(event.canonical_json()), "prev_hash": event.prev_hash, "hash": event.hash} for event in events
    ]
    return json.dumps({"events": rows}, indent=1, ensure_ascii=False).encode()


def _agreements_for_certificates() -> QuerySet[Agreement]:
    return Agreement.objects.select_related("organization", "template_version__template").prefetch_related(
        Prefetch("signatures", queryset=Signature.objects.order_by("signed_at")),
        Prefetch(
            "grants", queryset=AccessGrant.objects.select_related("checkpoint").order_by("checkpoint__parameter_count")
        ),
        "checkpoints",
    )


def agreement_certificate(agreement: Agreement) -> dict[str, Any]:
    """What a certificate of completion states about one agreement (from prefetched rows)."""
    signatures = list(agreement.signatures.all())
    by_side = {signature.side: signature for signature in signatures}
    partner, lab = by_side.get(Signature.Side.PARTNER), by_side.get(Signature.Side.LAB)
    times = [
        ("Sent for signature", agreement.sent_at),
        ("First viewed by the partner", agreement.first_viewed_at),
        ("Signed by the partner", partner.signed_at if partner else None),
        ("Countersigned by the lab", lab.signed_at if lab else None),
        ("Active from", agreement.activated_at),
    ]
    if agreement.ended_at:
        times.append((f"Ended ({agreement.get_status_display().lower()})", agreement.ended_at))
    return {
        "agreement": agreement,
        "signatures": signatures,
        "times": times,
        "grants": list(agreement.grants.all()),
        "checkpoints": sorted(agreement.checkpoints.all(), key=lambda c: c.parameter_count),
        "document_hash_matches": all(s.document_sha256 == agreement.document_sha256 for s in signatures),
    }


def agreement_record_data(agreement_pk: int) -> dict[str, Any]:
    """Everything an agreement's sealed record shows and embeds; the chain head is read last."""
    agreement = _agreements_for_certificates().get(pk=agreement_pk)
    events = agreement_record_events(agreement)
    head = ChainHead.objects.filter(pk=1).first()
    return {
        "certificate": agreement_certificate(agreement),
        "agreement": agreement,
        "document_html": agreement_document_as_signed(agreement, agreement_signatures(agreement)),
        "events": events,
        "chain_head_seq": head.seq if head else 0,
        "chain_head_hash": head.hash if head else GENESIS_HASH,
    }


def evidence_bundle_data(organization_pk: int) -> dict[str, Any]:
    """An organisation's evidence: agreements' certificates, grant history, and the job ledger."""
    organization = Organization.objects.get(pk=organization_pk)
    agreements = list(
        _agreements_for_certificates()
        .filter(organization=organization)
        .exclude(status=Agreement.Status.DRAFT)
        .order_by("created_at", "pk")
    )
    grants = list(
        AccessGrant.objects.filter(organization=organization)
        .select_related("checkpoint", "agreement")
        .order_by("created_at", "pk")
    )
    jobs = list(
        GenerationJob.objects.filter(organization=organization)
        .select_related("requester", "checkpoint", "grant__agreement")
        .prefetch_related(Prefetch("samples", queryset=Sample.objects.order_by("index")))
        .order_by("created_at", "pk")
    )
    # The weights hash a job actually ran on is in its completion event; the checkpoint's
    # current hash stands in for jobs that never ran.
    weights_at_run = {
        target_id: (data or {}).get("weights_sha256", "")
        for target_id, data in AuditEvent.objects.filter(
            target_type="inference.generationjob",
            action__in=["job.succeeded", "job.cancelled"],
            organization=organization,
        ).values_list("target_id", "data")
    }
    ledger: list[dict[str, Any]] = []
    for job in jobs:
        samples = list(job.samples.all())
        ledger.append(
            {
                "job": job,
                "weights_sha256": weights_at_run.get(str(job.pk)) or job.checkpoint.weights_sha256,
                "prompt_sha256": hashlib.sha256(job.prompt.encode()).hexdigest(),
                "samples": samples,
                "parameters": {
                    "max_new_tokens": job.max_new_tokens,
                    "temperature": job.temperature,
                    "top_k": job.top_k,
                    "top_p": job.top_p,
                    "num_samples": job.num_samples,
                    "seed": job.seed,
                },
            }
        )
    research = _organization_research(organization)
    head = ChainHead.objects.filter(pk=1).first()
    statuses: dict[str, int] = {}
    for agreement in agreements:
        label = agreement.get_status_display()
        statuses[label] = statuses.get(label, 0) + 1
    return {
        "organization": organization,
        "certificates": [agreement_certificate(a) for a in agreements],
        "agreement_statuses": sorted(statuses.items()),
        "grants": grants,
        "live_grants": sum(1 for g in grants if g.is_live()),
        "ledger": ledger,
        "tokens_generated": sum(job.tokens_generated for job in jobs),
        "sample_count": sum(len(row["samples"]) for row in ledger),
        **research,
        "chain_head_seq": head.seq if head else 0,
        "chain_head_hash": head.hash if head else GENESIS_HASH,
    }


def evidence_ledger_json(data: dict[str, Any]) -> bytes:
    """The bundle's grant history and job ledger, machine-readable, embedded in the PDF."""

    def iso(value: datetime | None) -> str | None:
        return value.astimezone(UTC).isoformat() if value else None

    payload = {
        "organization": data["organization"].legal_name,
        "agreements": [
            {
                "reference": c["agreement"].reference,
                "status": c["agreement"].status,
                "document_sha256": c["agreement"].document_sha256,
            }
            for c in data["certificates"]
        ],
        "grants": [
            {
                "agreement": g.agreement.reference,
                "checkpoint": g.checkpoint.slug,
                "starts_at": iso(g.starts_at),
                "ends_at": iso(g.ends_at),
                "daily_token_quota": g.daily_token_quota,
                "revoked_at": iso(g.revoked_at),
                "revoke_reason": g.revoke_reason,
            }
            for g in data["grants"]
        ],
        "jobs": [
            {
                "id": row["job"].pk,
                "created_at": iso(row["job"].created_at),
                "user": row["job"].requester.email,
                "checkpoint": row["job"].checkpoint.slug,
                "weights_sha256": row["weights_sha256"],
                "parameters": row["parameters"],
                "prompt_sha256": row["prompt_sha256"],
                "samples": [
                    {
                        "index": s.index,
                        "sha256": s.sha256,
                        "tokens": s.token_count,
                        "watermark_scheme": s.watermark_scheme or None,
                        "watermark_key_id": s.watermark_key_id or None,
                    }
                    for s in row["samples"]
                ],
                "prompt_tokens": row["job"].prompt_tokens,
                "tokens_generated": row["job"].tokens_generated,
                "status": row["job"].status,
            }
            for row in data["ledger"]
        ],
        "obligations": [
            {
                "reference": o.reference,
                "agreement": o.agreement.reference,
                "kind": o.kind,
                "checkpoint": o.checkpoint.slug if o.checkpoint else None,
                "description": o.description,
                "due_at": iso(o.due_at),
                "original_due_at": iso(o.original_due_at),
                "state": o.state(data["as_of"]),
                "overdue_at": iso(o.overdue_at),
                "fulfilled_at": iso(o.fulfilled_at),
                "fulfilled_late": o.fulfilled_late,
                "fulfilment": o.fulfilment,
                "extended_at": iso(o.extended_at),
                "extension_reason": o.extension_reason,
                "waived_at": iso(o.waived_at),
                "waive_reason": o.waive_reason,
            }
            for o in data["obligations"]
        ],
        "findings": [
            {
                "reference": f.reference,
                "title": f.title,
                "category": f.category,
                "checkpoints": [c.slug for c in f.checkpoints.all()],
                "status": f.status,
                "created_at": iso(f.created_at),
                "fulfils": f.obligation.reference if f.obligation else None,
                "publication_review": f.publication_review or None,
                "reviews": [
                    {"action": r.action, "by": r.actor.email, "at": iso(r.created_at), "comment": r.comment}
                    for r in f.reviews.all()
                ],
                "attachments": [
                    {"filename": a.filename, "sha256": a.sha256, "size_bytes": a.size_bytes}
                    for a in f.attachments.all()
                ],
            }
            for f in data["findings"]
        ],
        "incidents": [
            {
                "reference": i.reference,
                "title": i.title,
                "severity": i.severity,
                "checkpoints": [c.slug for c in i.checkpoints.all()],
                "discovered_at": iso(i.discovered_at),
                "reported_at": iso(i.created_at),
                "status": i.status,
                "action": i.action or None,
                "action_at": iso(i.action_at),
                "outcome": i.outcome,
                "resolved_at": iso(i.resolved_at),
            }
            for i in data["incidents"]
        ],
        "release_decisions": [
            {
                "reference": row["decision"].reference,
                "checkpoint": row["decision"].checkpoint.slug,
                "decision": row["decision"].decision,
                "decided_at": iso(row["decision"].decided_at),
                "decided_by": row["decision"].decided_by.email,
                "named": row["named"],
                "amendments": [a.reference for a in row["amendments"]],
                "evidence_sha256": row["decision"].evidence_sha256,
            }
            for row in data["release_decisions"]
        ],
    }
    return json.dumps(payload, indent=1, ensure_ascii=False).encode()


def _organization_research(organization: Organization) -> dict[str, Any]:
    """What the bundle adds from research and the agreement's obligations: a fixed number of queries."""
    obligations = list(
        Obligation.objects.filter(organization=organization)
        .select_related("agreement", "checkpoint", "fulfilled_by", "extended_by")
        .order_by("due_at", "pk")
    )
    by_size = Checkpoint.objects.order_by("parameter_count")
    findings = list(
        Finding.objects.filter(organization=organization)
        .select_related("author", "obligation")
        .prefetch_related(
            Prefetch("checkpoints", queryset=by_size),
            Prefetch("reviews", queryset=FindingReview.objects.select_related("actor").order_by("created_at", "pk")),
            Prefetch("attachments", queryset=FindingAttachment.objects.order_by("uploaded_at", "pk")),
        )
        .order_by("created_at", "pk")
    )
    incidents = list(
        Incident.objects.filter(organization=organization)
        .select_related("reporter", "action_checkpoint")
        .prefetch_related(Prefetch("checkpoints", queryset=by_size))
        .order_by("created_at", "pk")
    )
    # The decisions that concerned it: it was named as a partner, or an amendment was drafted for it.
    decisions = list(
        ReleaseDecision.objects.filter(Q(partners=organization) | Q(amendments__organization=organization))
        .distinct()
        .select_related("checkpoint", "decided_by")
        .prefetch_related(
            Prefetch("partners", queryset=Organization.objects.filter(pk=organization.pk), to_attr="named_here"),
            Prefetch(
                "amendments",
                queryset=Agreement.objects.filter(organization=organization).order_by("pk"),
                to_attr="amendments_here",
            ),
        )
        .order_by("decided_at", "pk")
    )
    now = timezone.now()
    return {
        "as_of": now,
        "obligations": obligations,
        "obligation_rows": [{"obligation": o, "state": o.state(now)} for o in obligations],
        "findings": findings,
        "incidents": incidents,
        "release_decisions": [
            {"decision": d, "named": bool(d.named_here), "amendments": d.amendments_here} for d in decisions
        ],
    }


# --- Stage review records -----------------------------------------------------------------------------


def stage_review_record_latest(*, user: User, decision_pk: int) -> tuple[ReleaseDecision, SealedRecord | None]:
    """A release decision (lab staff; partners 404, as on the stage review) and its sealed record, if ready."""
    if role_of(user) not in LAB_ROLES:
        raise Http404
    decision = ReleaseDecision.objects.select_related("checkpoint").filter(pk=decision_pk).first()
    if decision is None:
        raise Http404
    record = (
        SealedRecord.objects.filter(
            kind=SealedRecord.Kind.STAGE_REVIEW_RECORD, release_decision=decision, status=SealedRecord.Status.READY
        )
        .order_by("-sealed_at", "-pk")
        .first()
    )
    return decision, record


def stage_review_record_events(decision: ReleaseDecision) -> list[AuditEvent]:
    """The decision's own events and those of the amendments it drafted, in chain order."""
    amendment_ids = [str(a.pk) for a in decision.amendments.all()]
    about = Q(target_type="research.releasedecision", target_id=str(decision.pk))
    if amendment_ids:
        about |= Q(target_type="agreements.agreement", target_id__in=amendment_ids, action=events.AGREEMENT_CREATED)
    return list(AuditEvent.objects.filter(about).order_by("seq"))


def stage_review_record_data(decision_pk: int) -> dict[str, Any]:
    """Everything a stage review record shows and embeds; the chain head is read last."""
    decision = (
        ReleaseDecision.objects.select_related("checkpoint", "decided_by", "supersedes")
        .prefetch_related(
            Prefetch("partners", queryset=Organization.objects.order_by("name")),
            Prefetch("amendments", queryset=Agreement.objects.select_related("organization").order_by("pk")),
        )
        .get(pk=decision_pk)
    )
    evidence = decision.evidence or {}
    record_events = stage_review_record_events(decision)
    head = ChainHead.objects.filter(pk=1).first()
    return {
        "decision": decision,
        "effects": release_decision_effects(decision),
        "evidence": evidence,
        "evidence_view": _evidence_view(evidence),
        "evidence_canonical": evidence_canonical_json(evidence).decode(),
        "evidence_matches": evidence_sha256(evidence) == decision.evidence_sha256,
        "events": record_events,
        "chain_head_seq": head.seq if head else 0,
        "chain_head_hash": head.hash if head else GENESIS_HASH,
    }


def _evidence_view(evidence: dict[str, Any]) -> dict[str, Any]:
    """The stored summary with labels, as the record's tables show it."""
    findings = evidence.get("findings") or {}
    statuses = Finding.Status.choices
    by_category = findings.get("by_category") or {}
    jobs = (evidence.get("jobs") or {}).get("by_status") or {}
    incidents = evidence.get("incidents") or {}
    partners = []
    for row in evidence.get("partners") or []:
        capacity = row.get("quota_capacity") or 0
        used = row.get("tokens_used") or 0
        counts = row.get("findings") or {}
        findings_text = ", ".join(f"{counts[s]} {label.lower()}" for s, label in statuses if counts.get(s)) or "none"
        quota_use = f"{100 * used / capacity:.1f}%" if capacity else "no grant"
        partners.append({**row, "quota_use": quota_use, "findings_text": findings_text})
    return {
        "finding_statuses": statuses,
        "findings_by_category": [
            (label, [by_category.get(key, {}).get(s, 0) for s, _ in statuses])
            for key, label in Finding.Category.choices
        ],
        "findings_by_status": [(label, (findings.get("by_status") or {}).get(s, 0)) for s, label in statuses],
        "jobs_by_status": [(label, jobs.get(s, 0)) for s, label in GenerationJob.Status.choices],
        "incidents_by_severity": [
            (label, (incidents.get("by_severity") or {}).get(s, 0)) for s, label in Incident.Severity.choices
        ],
        "partners": partners,
    }


def audit_log_export_events(filters: dict[str, Any]) -> QuerySet[AuditEvent]:
    """The events an audit log export holds: the audit page's filters, oldest first.

    The requester's role was checked when the export was requested; this runs in the task.
    """

    def day(name: str) -> date | None:
        return date.fromisoformat(filters[name]) if filters.get(name) else None

    events = AuditEvent.objects.select_related("organization").order_by("seq")
    return _audit_events_filtered(
        events,
        filters.get("organization_id"),
        filters.get("actor_email"),
        filters.get("action"),
        day("created_after"),
        day("created_before"),
    )


def audit_filters_described(filters: dict[str, Any]) -> list[tuple[str, str]]:
    """The filters in words, for the export's heading and the records page."""
    described = []
    if filters.get("organization_id"):
        organization = Organization.objects.filter(pk=filters["organization_id"]).first()
        described.append(("Organisation", organization.name if organization else f"#{filters['organization_id']}"))
    for key, label in (
        ("actor_email", "Actor"),
        ("action", "Action"),
        ("created_after", "From"),
        ("created_before", "To"),
    ):
        if filters.get(key):
            described.append((label, str(filters[key])))
    return described


@dataclass(frozen=True)
class VerifyResult:
    """The verdict on an uploaded file: an untouched sealed record of ours, or not and why.

    `code` is empty when ok; otherwise too_large, not_pdf, unreadable, no_seal, other_key,
    seal_invalid, bytes_changed, incremental_update or unknown_hash; or unsealed_export for a CSV
    export whose bytes are exactly what we issued (`record` names it): ours, but nothing seals it.
    """

    ok: bool
    reason: str
    record: SealedRecord | None
    sealed_at: datetime | None
    code: str = ""
    sha256: str = ""
    cert_sha256: str = ""


def known_seal_certs() -> set[str]:
    """Certificates our records were sealed with (kept per record, so a rotated key's records still verify)."""
    from records import pdf

    known = set(
        SealedRecord.objects.filter(status=SealedRecord.Status.READY)
        .exclude(cert_sha256="")
        .values_list("cert_sha256", flat=True)
        .distinct()
    )
    with contextlib.suppress(pdf.SealKeyMissing):
        known.add(pdf.seal_cert_sha256())
    return known


def record_verify(file_bytes: bytes) -> VerifyResult:
    """Is this file an untouched sealed record of ours? Checks the seal (whose key, intact, covering
    the whole file: nothing appended since) and that we issued exactly these bytes (SHA-256)."""
    from records import pdf

    digest = hashlib.sha256(file_bytes).hexdigest()
    check = pdf.inspect_seal(file_bytes, our_cert_sha256s=known_seal_certs())
    if not check.ok:
        record = None
        if check.code == "not_pdf":
            # A CSV export carries no seal, but its hash still says whether it is one we issued.
            record = SealedRecord.objects.filter(
                sha256=digest, kind=SealedRecord.Kind.AUDIT_LOG_CSV, status=SealedRecord.Status.READY
            ).first()
        reason, code = check.message, check.code
        if record is not None:
            code = "unsealed_export"
            reason = (
                f"These are exactly the bytes of {record.subject} #{record.pk}, exported "
                f"{record.sealed_at:%Y-%m-%d %H:%M} UTC (its SHA-256 is on record). A CSV carries no seal, so "
                "this proves only that the file is unchanged since we issued it; the sealed PDF export proves itself."
            )
        return VerifyResult(
            ok=False,
            reason=reason,
            record=record,
            sealed_at=check.signed_at,
            code=code,
            sha256=digest,
            cert_sha256=check.cert_sha256,
        )
    record = (
        SealedRecord.objects.select_related("agreement__organization", "organization")
        .filter(sha256=digest, status=SealedRecord.Status.READY)
        .exclude(kind=SealedRecord.Kind.AUDIT_LOG_CSV)
        .first()
    )
    if record is None:
        return VerifyResult(
            ok=False,
            reason="The seal is the lab's and intact, but ModelPact never issued a file with this SHA-256.",
            record=None,
            sealed_at=check.signed_at,
            code="unknown_hash",
            sha256=digest,
            cert_sha256=check.cert_sha256,
        )
    return VerifyResult(
        ok=True,
        reason=f"An untouched sealed record of ours: {record.subject}, sealed {record.sealed_at:%Y-%m-%d %H:%M:%S} UTC."
        if record.sealed_at
        else f"An untouched sealed record of ours: {record.subject}.",
        record=record,
        sealed_at=record.sealed_at,
        sha256=digest,
        cert_sha256=check.cert_sha256,
    )


@dataclass(frozen=True)
class RecordFile:
    record: SealedRecord
    pdf: bytes


def record_file_path(record: SealedRecord) -> Path:
    return Path(settings.RECORDS_DIR) / record.file_path


def record_file_bytes(record: SealedRecord) -> bytes:
    """The stored file of a ready record; a missing file is a 404, not a 500."""
    path = record_file_path(record)
    if not record.is_ready or not record.file_path or not path.is_file():
        raise Http404("The record's file is not available.")
    return path.read_bytes()


def agreement_record_pdf(*, user: User, agreement: Agreement) -> RecordFile:
    """The agreement's newest sealed record and its bytes (404 when none is sealed yet).

    Scoped like the agreement itself; the caller audits the download with services.record_download.
    """
    _, record = agreement_record_latest(user=user, agreement_pk=agreement.pk)
    if record is None:
        raise Http404(f"{agreement.reference} has no sealed record yet.")
    return RecordFile(record=record, pdf=record_file_bytes(record))
