"""Partner API for agreements: the list, one agreement, and its sealed record as a PDF."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import generics, serializers
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from agreements import selectors
from agreements.models import Agreement, Signature
from audit.selectors import agreement_record_pdf
from audit.services import record_download
from config.api import CreatedRangeFilterSet, ErrorSerializer


class AgreementSerializer(serializers.ModelSerializer):
    reference = serializers.CharField()
    organization = serializers.CharField(source="organization.name")
    template = serializers.SerializerMethodField()
    checkpoints = serializers.SerializerMethodField()
    end_date = serializers.DateField()
    amends = serializers.CharField(source="amends.reference", allow_null=True, default=None)

    class Meta:
        model = Agreement
        fields = [
            "id",
            "reference",
            "organization",
            "status",
            "template",
            "checkpoints",
            "effective_date",
            "term_months",
            "end_date",
            "daily_token_quota",
            "purpose",
            "amends",
            "document_sha256",
            "created_at",
            "sent_at",
            "partner_signed_at",
            "activated_at",
            "ended_at",
            "end_reason",
        ]

    def get_template(self, agreement: Agreement) -> str:
        version = agreement.template_version
        return f"{version.template.name} {version.label}"

    def get_checkpoints(self, agreement: Agreement) -> list[str]:
        # Sorted in Python: the selector prefetched them, and order_by() would query again per row.
        return [c.slug for c in sorted(agreement.checkpoints.all(), key=lambda c: c.parameter_count)]


class SignatureSerializer(serializers.ModelSerializer):
    class Meta:
        model = Signature
        fields = ["side", "full_name", "title", "signer_email", "signed_at", "document_sha256", "reauth_method"]


class AgreementDetailSerializer(AgreementSerializer):
    signatures = serializers.SerializerMethodField()
    document_html = serializers.CharField(help_text="The frozen document that was signed; empty for a draft.")

    class Meta(AgreementSerializer.Meta):
        fields = [*AgreementSerializer.Meta.fields, "signatures", "document_html"]

    @extend_schema_field(SignatureSerializer(many=True))
    def get_signatures(self, agreement: Agreement) -> list[dict[str, Any]]:
        return SignatureSerializer(selectors.agreement_signatures(agreement), many=True).data


class AgreementFilter(CreatedRangeFilterSet):
    status = django_filters.ChoiceFilter(choices=Agreement.Status.choices)
    checkpoint = django_filters.CharFilter(field_name="checkpoints__slug", max_length=64, label="Checkpoint slug")

    class Meta:
        model = Agreement
        fields = ["status", "checkpoint"]


@extend_schema(tags=["agreements"])
class AgreementListApi(generics.ListAPIView):
    """Your organisation's agreements, newest first (drafts are the lab's business until sent)."""

    serializer_class = AgreementSerializer
    filterset_class = AgreementFilter
    queryset = Agreement.objects.none()  # for the schema; requests use get_queryset

    def get_queryset(self) -> QuerySet[Agreement]:
        return selectors.agreement_list(user=self.request.user).select_related("amends")


@extend_schema(tags=["agreements"])
class AgreementDetailApi(generics.RetrieveAPIView):
    serializer_class = AgreementDetailSerializer

    def get_object(self) -> Agreement:
        return selectors.agreement_get(user=self.request.user, pk=self.kwargs["pk"])


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
        agreement = selectors.agreement_get(user=request.user, pk=pk)
        record = agreement_record_pdf(user=request.user, agreement=agreement)  # 404 until one is sealed
        record_download(actor=request.user, record=record.record)  # who took a copy is audited
        response = HttpResponse(record.pdf, content_type="application/pdf")
        filename = record.record.filename or f"{agreement.reference}.pdf"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        # Errors are JSON even when the client asked for a PDF.
        if getattr(response, "data", None) is not None and response.status_code >= 400:
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), "application/json"
        return super().finalize_response(request, response, *args, **kwargs)
