"""Partner API for agreements (the list and one agreement; its sealed record as a PDF is records.api), and
for what they allow: checkpoints with this organisation's access, grants, access requests."""

from __future__ import annotations

from typing import Any

import django_filters
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api import RoleRequired
from accounts.models import PARTNER_ROLES
from accounts.permissions import request_user, role_of
from agreements import selectors, services
from agreements.models import AccessGrant, AccessRequest, Agreement, Obligation, Signature
from core.api import ErrorSerializer, StrictCharField
from core.filters import CreatedRangeFilterSet
from core.validators import PURPOSE_MAX_CHARS, clean_purpose
from models_registry.models import Checkpoint
from models_registry.selectors import checkpoints_by_slug


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
        # many=True makes a ListSerializer, whose data is a list; the stubs type it as one dict.
        return SignatureSerializer(selectors.agreement_signatures(agreement), many=True).data  # type: ignore[return-value]


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
        return selectors.agreement_list(user=request_user(self.request)).select_related("amends")


@extend_schema(tags=["agreements"])
class AgreementDetailApi(generics.RetrieveAPIView):
    serializer_class = AgreementDetailSerializer

    def get_object(self) -> Agreement:
        return selectors.agreement_get(user=request_user(self.request), pk=self.kwargs["pk"])


# --- Serializers --------------------------------------------------------------------------------


class AccessSerializer(serializers.Serializer):
    """What the access choke point says about this organisation and checkpoint right now."""

    allowed = serializers.BooleanField()
    code = serializers.CharField(help_text="ok, quota_exceeded, no_agreement, not_yet_active, expired, revoked, ...")
    message = serializers.CharField()
    quota_left = serializers.IntegerField(allow_null=True, help_text="Tokens left today (UTC).")
    until = serializers.DateTimeField(allow_null=True, help_text="When the grant in force ends.")
    agreement = serializers.CharField(allow_null=True, help_text="The agreement that grants access.")
    pending_request = serializers.IntegerField(allow_null=True, help_text="An access request awaiting review.")


class CheckpointSerializer(serializers.Serializer):
    slug = serializers.CharField()
    display_name = serializers.CharField()
    size_label = serializers.CharField()
    parameter_count = serializers.IntegerField()
    n_layer = serializers.IntegerField()
    n_embd = serializers.IntegerField()
    n_head = serializers.IntegerField()
    context_length = serializers.IntegerField(help_text="Prompt tokens + max_new_tokens may not exceed this.")
    released_on = serializers.DateField()
    status = serializers.ChoiceField(choices=Checkpoint.Status.choices)
    status_reason = serializers.CharField()
    is_demo = serializers.BooleanField(help_text="Served from a tiny demo build, not the released weights.")
    access = AccessSerializer(
        allow_null=True,
        help_text="Your organisation's access now; null for lab staff (the lab grants, it does not use).",
    )


def _with_access(row: selectors.PartnerCheckpoint) -> Checkpoint:
    """The checkpoint, carrying what the choke point said about it for the caller's organisation."""
    decision = row.decision
    grant = decision.grant if row.usable else None  # a usable checkpoint has its grant
    checkpoint = row.checkpoint
    # Read by CheckpointSerializer's `access` field; not a model field.
    checkpoint.access = {  # type: ignore[attr-defined]
        "allowed": decision.allowed,
        "code": decision.code,
        "message": decision.message,
        "quota_left": decision.quota_left,
        "until": grant.ends_at if grant else None,
        "agreement": grant.agreement.reference if grant else None,
        "pending_request": row.pending_request.pk if row.pending_request else None,
    }
    return checkpoint


class GrantSerializer(serializers.ModelSerializer):
    organization = serializers.CharField(source="organization.name")
    checkpoint = serializers.CharField(source="checkpoint.slug")
    agreement = serializers.CharField(source="agreement.reference")
    live = serializers.SerializerMethodField()

    class Meta:
        model = AccessGrant
        fields = [
            "id",
            "organization",
            "checkpoint",
            "agreement",
            "starts_at",
            "ends_at",
            "daily_token_quota",
            "live",
            "revoked_at",
            "revoke_reason",
            "created_at",
        ]

    def get_live(self, grant: AccessGrant) -> bool:
        # The agreement's status is checked too: a terminated agreement's grant is not in force.
        return grant.is_live(self.context["now"]) and grant.agreement.status == Agreement.Status.ACTIVE


class AccessRequestSerializer(serializers.ModelSerializer):
    organization = serializers.CharField(source="organization.name")
    requester = serializers.EmailField(source="requester.email")
    checkpoints: serializers.SlugRelatedField[Checkpoint] = serializers.SlugRelatedField(
        slug_field="slug", many=True, read_only=True
    )
    decided_by = serializers.EmailField(source="decided_by.email", allow_null=True, default=None)
    amendment = serializers.CharField(source="amendment.reference", allow_null=True, default=None)

    class Meta:
        model = AccessRequest
        fields = [
            "id",
            "organization",
            "requester",
            "checkpoints",
            "purpose",
            "status",
            "created_at",
            "decided_at",
            "decided_by",
            "decision_reason",
            "amendment",
        ]


class AccessRequestCreateSerializer(serializers.Serializer):
    checkpoints = serializers.ListField(
        child=StrictCharField(max_length=64), min_length=1, max_length=8, help_text="Checkpoint slugs."
    )
    purpose = StrictCharField(
        max_length=PURPOSE_MAX_CHARS, help_text="The research purpose, at least 20 visible characters."
    )

    def validate_purpose(self, purpose: str) -> str:
        try:
            return clean_purpose(purpose)
        except ValidationError as exc:
            raise serializers.ValidationError(exc.message_dict["purpose"]) from None

    def validate_checkpoints(self, slugs: list[str]) -> list[Checkpoint]:
        try:
            return checkpoints_by_slug(slugs)
        except ValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None


# --- Views --------------------------------------------------------------------------------------


@extend_schema(tags=["checkpoints"])
class CheckpointListApi(generics.ListAPIView):
    """The GPT-2 checkpoints, smallest first, each with your organisation's access now."""

    serializer_class = CheckpointSerializer
    filter_backends: list[Any] = []
    pagination_class = None  # the four GPT-2 stages

    # A list serves here: this view neither filters nor paginates.
    def get_queryset(self) -> list[Any]:  # type: ignore[override]
        if role_of(self.request.user) in PARTNER_ROLES:
            return [_with_access(row) for row in selectors.partner_checkpoint_overview(user=request_user(self.request))]
        checkpoints = list(selectors.checkpoint_registry(user=request_user(self.request)))
        for checkpoint in checkpoints:
            checkpoint.access = None  # type: ignore[attr-defined]
        return checkpoints


class GrantFilter(CreatedRangeFilterSet):
    checkpoint = django_filters.CharFilter(field_name="checkpoint__slug", max_length=64, label="Checkpoint slug")
    live = django_filters.BooleanFilter(method="_live", label="Only grants in force now (true) or not (false)")

    class Meta:
        model = AccessGrant
        fields = ["checkpoint", "live"]

    def _live(self, queryset: QuerySet[AccessGrant], name: str, value: bool) -> QuerySet[AccessGrant]:
        live = selectors.live_grants_q(timezone.now())
        return queryset.filter(live) if value else queryset.exclude(live)


@extend_schema(tags=["grants"])
class GrantListApi(generics.ListAPIView):
    """Access grants created by active agreements, with their term, quota and any revocation."""

    serializer_class = GrantSerializer
    filterset_class = GrantFilter
    queryset = AccessGrant.objects.none()  # for the schema; requests use get_queryset

    def get_queryset(self) -> QuerySet[AccessGrant]:
        return selectors.grant_list(user=request_user(self.request))

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "now": timezone.now()}


class AccessRequestFilter(CreatedRangeFilterSet):
    status = django_filters.ChoiceFilter(choices=AccessRequest.Status.choices)
    checkpoint = django_filters.CharFilter(field_name="checkpoints__slug", max_length=64, label="Checkpoint slug")

    class Meta:
        model = AccessRequest
        fields = ["status", "checkpoint"]


@extend_schema(tags=["access requests"])
class AccessRequestListCreateApi(generics.ListAPIView):
    """Your organisation's access requests (lab staff: everyone's); partners ask for more access here."""

    serializer_class = AccessRequestSerializer
    filterset_class = AccessRequestFilter
    queryset = AccessRequest.objects.none()  # for the schema; requests use get_queryset
    permission_classes = [*generics.ListAPIView.permission_classes, RoleRequired.to("POST", *PARTNER_ROLES)]

    def get_queryset(self) -> QuerySet[AccessRequest]:
        return selectors.access_request_list(user=request_user(self.request))

    @extend_schema(
        request=AccessRequestCreateSerializer,
        responses={
            201: AccessRequestSerializer,
            413: OpenApiResponse(ErrorSerializer, description="request_too_large: the body is over 2.5 MB."),
        },
    )
    def post(self, request: Request) -> Response:
        """Ask for access to checkpoints for a stated purpose; legal reviews it."""
        serializer = AccessRequestCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        access_request = services.access_request_create(actor=request_user(request), **serializer.validated_data)
        access_request = selectors.access_request_get(user=request_user(request), pk=access_request.pk)
        return Response(AccessRequestSerializer(access_request).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["access requests"])
class AccessRequestDetailApi(generics.RetrieveAPIView):
    serializer_class = AccessRequestSerializer

    def get_object(self) -> AccessRequest:
        return selectors.access_request_get(user=request_user(self.request), pk=self.kwargs["pk"])


# --- Obligations ----------------------------------------------------------------------------------------


class ObligationSerializer(serializers.ModelSerializer):
    reference = serializers.CharField()
    organization = serializers.CharField(source="organization.name")
    agreement = serializers.CharField(source="agreement.reference", help_text="The agreement it is owed under.")
    checkpoint = serializers.CharField(
        source="checkpoint.slug", allow_null=True, default=None, help_text="The checkpoint a findings report covers."
    )
    state = serializers.SerializerMethodField(help_text="overdue, due_soon, open, fulfilled or waived.")
    pauses_access = serializers.BooleanField(
        help_text="Whether it pauses the organisation's access while overdue (findings and final reports)."
    )
    fulfilled_late = serializers.BooleanField()

    class Meta:
        model = Obligation
        fields = [
            "id",
            "reference",
            "organization",
            "kind",
            "description",
            "agreement",
            "checkpoint",
            "due_at",
            "original_due_at",
            "state",
            "pauses_access",
            "reminded_at",
            "overdue_at",
            "fulfilled_at",
            "fulfilment",
            "fulfilled_late",
            "extended_at",
            "extension_reason",
        ]

    @extend_schema_field(serializers.ChoiceField(choices=list(Obligation.STATES)))
    def get_state(self, obligation: Obligation) -> str:
        return obligation.state(self.context["now"])


@extend_schema(tags=["obligations"])
class ObligationListApi(generics.ListAPIView):
    """What your organisation owes the lab under its agreements, by due date (lab staff: every partner's).

    An overdue findings or final report (`pauses_access`) pauses the organisation's access: job submission
    is refused with `access_denied` (reason `obligation_overdue`) until a finding fulfils it or the lab
    extends its due date."""

    serializer_class = ObligationSerializer
    filterset_class = selectors.ObligationFilter
    queryset = Obligation.objects.none()  # for the schema; requests use get_queryset

    def get_queryset(self) -> QuerySet[Obligation]:
        return selectors.obligation_list(user=request_user(self.request))

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "now": timezone.now()}
