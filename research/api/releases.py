"""API for stage reviews: a checkpoint's evidence summary, its per-partner table and its decisions.

Lab staff and auditors only; to partners a stage review does not exist (404), as on the page.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Organization
from accounts.permissions import request_user
from agreements.models import Agreement
from core.api import ErrorSerializer
from research.models import ReleaseDecision
from research.selectors.releases import (
    PartnerEvidence,
    evidence_sha256,
    stage_review,
    stage_review_checkpoint,
    stage_review_summary,
)


class ObligationCountsSerializer(serializers.Serializer):
    fulfilled = serializers.IntegerField(help_text="Fulfilled by the due date.")
    fulfilled_late = serializers.IntegerField(help_text="Fulfilled after the due date.")
    overdue = serializers.IntegerField(help_text="Open and past the due date now.")
    open = serializers.IntegerField(help_text="Open and not yet due.")
    waived = serializers.IntegerField()


class FindingCountsSerializer(serializers.Serializer):
    submitted = serializers.IntegerField()
    acknowledged = serializers.IntegerField()
    changes_requested = serializers.IntegerField()
    accepted = serializers.IntegerField()


class DayTokensSerializer(serializers.Serializer):
    day = serializers.DateField(help_text="UTC day.")
    tokens = serializers.IntegerField(help_text="Tokens generated that day under the partner's grants.")


class LiveGrantSerializer(serializers.Serializer):
    agreement = serializers.CharField(source="agreement.reference")
    ends_at = serializers.DateTimeField()
    daily_token_quota = serializers.IntegerField()


class PartnerEvidenceSerializer(serializers.Serializer):
    organization_id = serializers.IntegerField(source="organization.pk")
    organization = serializers.CharField(source="organization.name")
    good_standing = serializers.BooleanField(help_text="An active agreement and no overdue report: may be released to.")
    standing_note = serializers.CharField(help_text="Why not in good standing; empty when it is.")
    live_grant = LiveGrantSerializer(allow_null=True, help_text="Its live grant of the checkpoint, if any.")
    obligations = ObligationCountsSerializer()
    findings = FindingCountsSerializer()
    incidents_open = serializers.IntegerField()
    incidents_resolved = serializers.IntegerField()
    jobs = serializers.IntegerField(help_text="Jobs on the checkpoint in the window.")
    tokens_used = serializers.IntegerField(help_text="Tokens generated on the checkpoint in the window.")
    quota_capacity = serializers.IntegerField(help_text="Tokens its grants allowed over the window.")
    quota_use = serializers.FloatField(allow_null=True, help_text="tokens_used / quota_capacity; null without a grant.")
    tokens_by_day = serializers.SerializerMethodField()

    @extend_schema_field(DayTokensSerializer(many=True))
    def get_tokens_by_day(self, partner: PartnerEvidence) -> list[dict[str, Any]]:
        days = self.context["days"]
        return [{"day": day, "tokens": tokens} for day, tokens in zip(days, partner.tokens_by_day, strict=True)]


class ReleaseDecisionSerializer(serializers.ModelSerializer):
    reference = serializers.CharField()
    decided_by = serializers.EmailField(source="decided_by.email")
    supersedes = serializers.CharField(source="supersedes.reference", allow_null=True, default=None)
    partners: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        many=True, read_only=True, slug_field="name"
    )
    amendments: serializers.SlugRelatedField[Agreement] = serializers.SlugRelatedField(
        many=True, read_only=True, slug_field="reference"
    )

    class Meta:
        model = ReleaseDecision
        fields = [
            "id",
            "reference",
            "decision",
            "rationale",
            "decided_at",
            "decided_by",
            "supersedes",
            "partners",
            "amendments",
            "evidence_sha256",
        ]


class CheckpointBriefSerializer(serializers.Serializer):
    slug = serializers.CharField()
    display_name = serializers.CharField()
    status = serializers.CharField()
    public_since = serializers.DateTimeField(allow_null=True)


class StageReviewSerializer(serializers.Serializer):
    checkpoint = CheckpointBriefSerializer()
    window_start = serializers.DateField(help_text="First UTC day of the eight weeks the usage covers.")
    window_end = serializers.DateField(help_text="Last UTC day (today).")
    summary = serializers.DictField(
        help_text="The evidence summary a decision made now would store: counts and ids, never texts."
    )
    evidence_sha256 = serializers.CharField(help_text="SHA-256 of the summary as canonical JSON.")
    partners = PartnerEvidenceSerializer(many=True)
    decisions = ReleaseDecisionSerializer(many=True, help_text="Newest first; the first is in force.")


@extend_schema(
    tags=["stage reviews"],
    parameters=[
        OpenApiParameter(
            "checkpoint",
            str,
            OpenApiParameter.PATH,
            description="The checkpoint's slug, e.g. gpt2-large.",
            pattern=r"^[-a-zA-Z0-9_]+$",
        )
    ],
    responses={
        200: StageReviewSerializer,
        404: OpenApiResponse(ErrorSerializer, description="No such checkpoint, or you are not lab staff."),
    },
)
class StageReviewApi(APIView):
    """A checkpoint's stage review: the evidence summary, the per-partner table and the release decisions."""

    def get(self, request: Request, checkpoint: str) -> Response:
        user = request_user(request)
        found = stage_review_checkpoint(user=user, slug=checkpoint)  # 404 for partners and unknown slugs
        review = stage_review(user=user, checkpoint=found)
        summary = stage_review_summary(review)
        payload = {
            "checkpoint": found,
            "window_start": review.window_start,
            "window_end": review.window_end,
            "summary": summary,
            "evidence_sha256": evidence_sha256(summary),
            "partners": review.partners,
            "decisions": review.decisions,
        }
        return Response(StageReviewSerializer(payload, context={"days": review.days}).data)
