"""Partner API for incidents: report misuse or a security incident, and list the reports you may see."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api import RoleRequired
from accounts.models import Organization
from accounts.permissions import request_user
from core.api import StrictCharField
from models_registry.models import Checkpoint
from models_registry.selectors import checkpoints_by_slug
from research.models import Incident
from research.selectors import incidents as selectors
from research.services import incidents as services


class IncidentSerializer(serializers.ModelSerializer):
    reference = serializers.CharField(help_text="INC-00004: how pages, notices and the kill switch name it.")
    organization = serializers.CharField(source="organization.name")
    reporter = serializers.EmailField(source="reporter.email")
    checkpoints: serializers.SlugRelatedField[Checkpoint] = serializers.SlugRelatedField(
        slug_field="slug", many=True, read_only=True
    )
    obligation = serializers.CharField(
        source="obligation.reference",
        allow_null=True,
        default=None,
        help_text="The incident-report obligation this report met (partners under an active agreement).",
    )
    reported_late = serializers.SerializerMethodField(
        help_text="True when it was reported later than the agreement's hours after discovery."
    )
    action_checkpoint = serializers.CharField(source="action_checkpoint.slug", allow_null=True, default=None)

    class Meta:
        model = Incident
        fields = [
            "id",
            "reference",
            "title",
            "description",
            "severity",
            "status",
            "organization",
            "reporter",
            "checkpoints",
            "discovered_at",
            "created_at",
            "obligation",
            "reported_late",
            "action",
            "action_checkpoint",
            "action_at",
            "outcome",
            "resolved_at",
        ]

    def get_reported_late(self, incident: Incident) -> bool:
        return bool(incident.obligation and incident.obligation.fulfilled_late)


class IncidentCreateSerializer(serializers.Serializer):
    title = StrictCharField(max_length=services.TITLE_MAX_CHARS)
    description = StrictCharField(
        max_length=services.DESCRIPTION_MAX_CHARS, trim_whitespace=False, help_text="What happened (plain text)."
    )
    discovered_at = serializers.DateTimeField(
        help_text="When it was discovered (ISO 8601 with a zone): not in the future, not before 2019."
    )
    severity = serializers.ChoiceField(choices=Incident.Severity.choices)
    checkpoints = serializers.ListField(
        child=StrictCharField(max_length=64), min_length=1, max_length=8, help_text="Checkpoint slugs, e.g. gpt2."
    )
    organization = serializers.IntegerField(
        min_value=1,
        max_value=2**63 - 1,
        allow_null=True,
        default=None,
        help_text="Lab staff: the partner organisation's id. Partners leave it out (their own is meant).",
    )

    def validate_checkpoints(self, slugs: list[str]) -> list[Checkpoint]:
        try:
            return checkpoints_by_slug(slugs)
        except ValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None

    def validate_organization(self, pk: int | None) -> Organization | None:
        if pk is None:
            return None
        organization = Organization.objects.filter(pk=pk, kind=Organization.Kind.PARTNER).first()
        if organization is None:
            raise serializers.ValidationError("No partner organisation has this id.")
        return organization


@extend_schema(tags=["incidents"])
class IncidentListCreateApi(generics.ListAPIView):
    """Your organisation's incident reports, newest first (lab staff: every partner's)."""

    serializer_class = IncidentSerializer
    filterset_class = selectors.IncidentFilter
    queryset = Incident.objects.none()  # for the schema; requests use get_queryset
    permission_classes = [
        *generics.ListAPIView.permission_classes,
        RoleRequired.to("POST", *selectors.INCIDENT_REPORTERS),
    ]

    def get_queryset(self) -> QuerySet[Incident]:
        return selectors.incident_list(user=request_user(self.request))

    @extend_schema(request=IncidentCreateSerializer, responses={201: IncidentSerializer})
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Report misuse or a security incident; the lab's admins and legal are told at once."""
        serializer = IncidentCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        incident = services.incident_report(actor=request_user(request), **serializer.validated_data)
        incident = selectors.incident_get(user=request_user(request), pk=incident.pk)
        return Response(IncidentSerializer(incident).data, status=status.HTTP_201_CREATED)
