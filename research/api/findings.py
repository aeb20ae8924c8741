"""Partner API for findings: submit one (JSON, or multipart with PDF attachments), list them, read one with
its review history, attachments' SHA-256 and the state of its pre-publication review.

A cited job that is not the caller's organisation's is 404 for the whole submission: nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, parsers, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api import RoleRequired
from accounts.models import PARTNER_ROLES
from accounts.permissions import request_user
from agreements.models import Obligation
from core.api import ApiError, ErrorSerializer, JSONParser, StrictCharField
from models_registry.models import Checkpoint
from models_registry.selectors import checkpoints_by_slug
from research.models import Finding, FindingAttachment, FindingReview
from research.selectors import findings as selectors
from research.services import findings as services

# --- Serializers --------------------------------------------------------------------------------


class FindingAttachmentSerializer(serializers.ModelSerializer):
    class Meta:
        model = FindingAttachment
        fields = ["id", "filename", "size_bytes", "sha256", "uploaded_at"]


class FindingReviewSerializer(serializers.ModelSerializer):
    actor = serializers.EmailField(source="actor.email")

    class Meta:
        model = FindingReview
        fields = ["action", "actor", "comment", "created_at"]


class FindingSerializer(serializers.ModelSerializer):
    """A finding in the list: what it is about and where its reviews stand."""

    reference = serializers.CharField(help_text="F-00012: how pages, notices and obligations name it.")
    organization = serializers.CharField(source="organization.name")
    author = serializers.EmailField(source="author.email")
    checkpoints: serializers.SlugRelatedField[Checkpoint] = serializers.SlugRelatedField(
        slug_field="slug", many=True, read_only=True
    )
    obligation = serializers.CharField(
        source="obligation.reference",
        allow_null=True,
        default=None,
        help_text="The report obligation this finding fulfilled, if any.",
    )

    class Meta:
        model = Finding
        fields = [
            "id",
            "reference",
            "title",
            "category",
            "status",
            "organization",
            "author",
            "checkpoints",
            "obligation",
            "publication_venue",
            "publication_date",
            "publication_review",
            "publication_review_due_at",
            "created_at",
            "updated_at",
        ]


class FindingDetailSerializer(FindingSerializer):
    """One finding in full: its summary as written and as shown, the cited jobs, attachments and reviews."""

    cited_jobs: serializers.PrimaryKeyRelatedField[Any] = serializers.PrimaryKeyRelatedField(
        many=True, read_only=True, help_text="Ids of your organisation's jobs it cites."
    )
    attachments = FindingAttachmentSerializer(many=True, read_only=True)
    reviews = FindingReviewSerializer(many=True, read_only=True, help_text="The review history, oldest first.")
    publication_reviewed_by = serializers.EmailField(
        source="publication_reviewed_by.email", allow_null=True, default=None
    )

    class Meta(FindingSerializer.Meta):
        fields = [
            *FindingSerializer.Meta.fields,
            "summary",
            "summary_html",
            "cited_jobs",
            "attachments",
            "publication_reviewed_at",
            "publication_reviewed_by",
            "publication_review_reasons",
            "reviews",
        ]


class FindingCreateSerializer(serializers.Serializer):
    """Checked here for a quick answer and again in the service, which is the authority."""

    title = StrictCharField(max_length=services.TITLE_MAX_CHARS)
    category = serializers.ChoiceField(choices=Finding.Category.choices)
    checkpoints = serializers.ListField(
        child=StrictCharField(max_length=64),
        min_length=1,
        max_length=8,
        help_text="Slugs of checkpoints your organisation holds or held a grant for, e.g. gpt2.",
    )
    summary = StrictCharField(
        max_length=services.SUMMARY_MAX_CHARS,
        trim_whitespace=False,
        help_text="Markdown. Stored as written and shown rendered and sanitised: no raw HTML, no images.",
    )
    cited_jobs = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
        max_length=services.MAX_CITED_JOBS,
        default=list,
        help_text="Ids of your organisation's jobs the finding rests on; any other id is 404.",
    )
    obligation = serializers.IntegerField(
        min_value=1,
        max_value=2**63 - 1,
        allow_null=True,
        default=None,
        help_text="Id of an open report obligation of yours that this finding fulfils (GET /api/v1/obligations/).",
    )
    publication_venue = StrictCharField(max_length=services.VENUE_MAX_CHARS, allow_blank=True, default="")
    publication_date = serializers.DateField(
        allow_null=True,
        default=None,
        help_text="The planned publication date: at least the agreement's pre-publication review days away.",
    )

    def validate_checkpoints(self, slugs: list[str]) -> list[Checkpoint]:
        try:
            return checkpoints_by_slug(slugs)
        except ValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None

    def validate_obligation(self, pk: int | None) -> Obligation | None:
        if pk is None:
            return None
        obligation = Obligation.objects.filter(pk=pk).first()
        if obligation is None:
            raise serializers.ValidationError("Choose an open report obligation of your organisation, or none.")
        return obligation


class FindingUploadSerializer(FindingCreateSerializer):
    attachments = serializers.ListField(
        child=serializers.FileField(allow_empty_file=True),
        max_length=services.MAX_ATTACHMENTS,
        default=list,
        help_text="Up to 5 PDFs (checked by their content), each at most 20 MB; repeat the field per file.",
    )


class FindingUploadParser(parsers.MultiPartParser):
    """Multipart, refusing before reading a body too large to hold five attachments (413 request_too_large)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") or "0" if request is not None else "0"
        limit = services.MAX_ATTACHMENTS * settings.FINDING_ATTACHMENT_MAX_BYTES + 1024 * 1024
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(
                status=413,
                code="request_too_large",
                message=f"The upload is over {limit / 2**20:.0f} MB: attach at most {services.MAX_ATTACHMENTS} "
                "PDFs of at most 20 MB each.",
                details={"limit_bytes": limit},
            )
        return super().parse(stream, media_type, parser_context)


# --- Views --------------------------------------------------------------------------------------


@extend_schema(tags=["findings"])
class FindingListCreateApi(generics.ListAPIView):
    """Your organisation's findings, newest first (lab staff: every partner's)."""

    serializer_class = FindingSerializer
    filterset_class = selectors.FindingFilter
    queryset = Finding.objects.none()  # for the schema; requests use get_queryset
    parser_classes = [JSONParser, FindingUploadParser]
    permission_classes = [*generics.ListAPIView.permission_classes, RoleRequired.to("POST", *PARTNER_ROLES)]

    def get_queryset(self) -> QuerySet[Finding]:
        return selectors.finding_list(user=request_user(self.request))

    @extend_schema(
        request={"application/json": FindingCreateSerializer, "multipart/form-data": FindingUploadSerializer},
        responses={
            201: FindingDetailSerializer,
            404: OpenApiResponse(ErrorSerializer, description="not_found: a cited job is not your organisation's."),
            413: OpenApiResponse(ErrorSerializer, description="request_too_large: the upload is too large."),
        },
    )
    def post(self, request: Request) -> Response:
        """Submit a finding (with PDF attachments as multipart/form-data); the lab reviews it."""
        multipart = request.content_type.startswith("multipart/")
        serializer = (FindingUploadSerializer if multipart else FindingCreateSerializer)(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        finding = services.finding_submit(
            actor=request_user(request),
            title=data["title"],
            category=data["category"],
            checkpoints=data["checkpoints"],
            summary=data["summary"],
            cited_job_ids=data["cited_jobs"],
            obligation=data["obligation"],
            publication_venue=data["publication_venue"],
            publication_date=data["publication_date"],
            attachments=data.get("attachments", []),
        )
        finding = selectors.finding_get(user=request_user(request), pk=finding.pk)
        headers = {"Location": f"{request.path}{finding.pk}/"}
        return Response(FindingDetailSerializer(finding).data, status=status.HTTP_201_CREATED, headers=headers)


@extend_schema(tags=["findings"])
class FindingDetailApi(generics.RetrieveAPIView):
    """One finding: reviews, attachments (SHA-256 and size), cited job ids and the publication review."""

    serializer_class = FindingDetailSerializer

    def get_object(self) -> Finding:
        return selectors.finding_get(user=request_user(self.request), pk=self.kwargs["pk"])
