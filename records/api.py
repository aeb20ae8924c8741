"""API for the audit log (lab admins, legal and auditors), an agreement's sealed record as a PDF (its
organisation and the lab) and record verification (anyone signed in)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import request_user, require_role
from agreements.selectors import agreement_get
from audit import events
from audit.models import AuditEvent
from audit.selectors import audit_chain_verify
from core.api import ApiError, ErrorSerializer
from core.filters import END_BEFORE_START
from records.forms import UPLOAD_LIMIT, upload_declared_too_large
from records.models import SealedRecord
from records.selectors import AUDIT_READERS, agreement_record_pdf, audit_event_list, record_verify
from records.services import record_download


class AuditEventSerializer(serializers.ModelSerializer):
    organization = serializers.CharField(source="organization.name", allow_null=True, default=None)

    class Meta:
        model = AuditEvent
        fields = [
            "seq",
            "created_at",
            "actor_email",
            "organization",
            "action",
            "target_type",
            "target_id",
            "target_repr",
            "data",
            "ip",
            "prev_hash",
            "hash",
        ]


class AuditQuerySerializer(serializers.Serializer):
    """The audit page's filters, passed to the selector as they are."""

    organization = serializers.IntegerField(required=False, min_value=1, help_text="Organisation id.")
    actor = serializers.EmailField(required=False, max_length=254, help_text="Actor email.")
    action = serializers.CharField(
        required=False, max_length=64, help_text="An action (agreement.signed) or a prefix ending in a dot (job.)."
    )
    created_after = serializers.DateField(required=False, help_text="Created on or after (UTC date).")
    created_before = serializers.DateField(required=False, help_text="Created on or before (UTC date).")

    def validate_action(self, action: str) -> str:
        known = events.all_actions()
        if action in known or (action.endswith(".") and any(a.startswith(action) for a in known)):
            return action
        raise serializers.ValidationError(f"Unknown action {action!r}; use one like agreement.signed, or job.")

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("created_after") and data.get("created_before") and data["created_after"] > data["created_before"]:
            raise serializers.ValidationError({"created_before": END_BEFORE_START})
        return data


@extend_schema(tags=["audit"], parameters=[AuditQuerySerializer])
class AuditEventListApi(generics.ListAPIView):
    """The hash-chained audit log, newest first. Lab admins, legal and auditors only."""

    serializer_class = AuditEventSerializer
    filter_backends: list[Any] = []
    cursor_ordering = ("-seq",)

    def get_queryset(self) -> QuerySet[AuditEvent]:
        require_role(self.request.user, *AUDIT_READERS)
        query = AuditQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        filters = dict(query.validated_data)
        return audit_event_list(
            user=request_user(self.request),
            organization_id=filters.get("organization"),
            actor_email=filters.get("actor"),
            action=filters.get("action"),
            created_after=filters.get("created_after"),
            created_before=filters.get("created_before"),
        )


class ChainReportSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    events = serializers.IntegerField(help_text="Events checked.")
    head_seq = serializers.IntegerField()
    head_hash = serializers.CharField()
    first_bad_seq = serializers.IntegerField(allow_null=True)
    problem = serializers.CharField(help_text="Empty when the chain is intact.")


@extend_schema(tags=["audit"], responses={200: ChainReportSerializer})
class AuditVerifyApi(APIView):
    """Walk the whole audit chain and report the first event that does not fit, if any."""

    def get(self, request: Request) -> Response:
        require_role(request.user, *AUDIT_READERS)
        return Response(ChainReportSerializer(audit_chain_verify()).data)


class RecordUploadParser(MultiPartParser):
    """Multipart, refusing a body too large to hold a record before reading it (413 too_large).

    Here rather than in the view: whoever asks for the data first reads the body, and for a browser
    session that is the CSRF check during authentication.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        if parser_context and upload_declared_too_large(parser_context["request"]):
            raise ApiError(
                status=413, code="too_large", message="Uploads are limited to 20 MB; records are never larger."
            )
        return super().parse(stream, media_type, parser_context)


class RecordUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A PDF, at most 20 MB.")

    def validate_file(self, upload: Any) -> Any:
        if upload.size > UPLOAD_LIMIT:
            raise serializers.ValidationError(f"The file is {upload.size / 1e6:.1f} MB; the limit is 20 MB.")
        return upload


class VerifiedRecordSerializer(serializers.ModelSerializer):
    agreement = serializers.CharField(source="agreement.reference", allow_null=True, default=None)

    class Meta:
        model = SealedRecord
        fields = ["id", "kind", "subject", "agreement", "sealed_at", "sha256"]


class VerdictSerializer(serializers.Serializer):
    ok = serializers.BooleanField(help_text="True only for an untouched sealed record of ours.")
    code = serializers.CharField(
        help_text="Empty when ok; else not_pdf, unreadable, no_seal, other_key, seal_invalid, bytes_changed, "
        "incremental_update, unknown_hash or too_large; unsealed_export for a CSV export whose bytes are exactly "
        "what was issued (record names it), which no seal protects."
    )
    reason = serializers.CharField(help_text="What it is, or why it is not one of ours.")
    record = VerifiedRecordSerializer(allow_null=True, help_text="The record it matches, when recognised.")
    sealed_at = serializers.DateTimeField(allow_null=True)
    sha256 = serializers.CharField(help_text="SHA-256 of the uploaded file.")


@extend_schema(
    tags=["records"],
    request={"multipart/form-data": RecordUploadSerializer},
    responses={
        200: VerdictSerializer,
        413: OpenApiResponse(ErrorSerializer, description="too_large: the upload is over 20 MB."),
    },
)
class RecordVerifyApi(APIView):
    """A PDF in, the verdict out: is this an untouched sealed record of ours, and if not, why not."""

    parser_classes = [RecordUploadParser]

    def post(self, request: Request) -> Response:
        upload = RecordUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        result = record_verify(upload.validated_data["file"].read())
        return Response(VerdictSerializer(result).data)


class PdfRenderer(BaseRenderer):
    media_type = "application/pdf"
    format = "pdf"
    charset = None
    render_style = "binary"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return data


@extend_schema(
    tags=["agreements"],
    responses={
        (200, "application/pdf"): OpenApiResponse(OpenApiTypes.BINARY, description="The sealed PDF/A record."),
        404: OpenApiResponse(ErrorSerializer, description="No such agreement of yours, or no sealed record yet."),
    },
)
class AgreementPdfApi(APIView):
    """The agreement's sealed record: the signed document and its certificate of completion."""

    renderer_classes = [JSONRenderer, PdfRenderer]

    def get(self, request: Request, pk: int) -> HttpResponse:
        agreement = agreement_get(user=request_user(request), pk=pk)
        record = agreement_record_pdf(user=request_user(request), agreement=agreement)  # 404 until one is sealed
        record_download(actor=request_user(request), record=record.record)  # who took a copy is audited
        response = HttpResponse(record.pdf, content_type="application/pdf")
        filename = record.record.filename or f"{agreement.reference}.pdf"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        # Errors are JSON even when the client asked for a PDF.
        if getattr(response, "data", None) is not None and response.status_code >= 400:
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), "application/json"
        return super().finalize_response(request, response, *args, **kwargs)
