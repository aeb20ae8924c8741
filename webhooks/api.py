"""The webhooks API: partner admins (their organisation) and lab admins (any) manage endpoints,
read each endpoint's delivery log and resend a delivery. Everyone else is refused (403); another
organisation's endpoint is not found (404)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api import RoleRequired
from accounts.models import Organization
from accounts.permissions import request_user
from core.api import StrictCharField
from webhooks import selectors, services
from webhooks.models import EVENT_NAMES, Delivery, WebhookEndpoint
from webhooks.selectors import WEBHOOK_MANAGERS


class EndpointSerializer(serializers.ModelSerializer):
    organization = serializers.CharField(
        source="organization.name",
        allow_null=True,
        default=None,
        help_text="Whose events; null for every organisation's.",
    )
    events = serializers.ListField(child=serializers.ChoiceField(choices=EVENT_NAMES))
    previous_secret_valid_until = serializers.DateTimeField(
        source="previous_secret_expires_at", allow_null=True, help_text="After a rotation, the old secret's end."
    )

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "url",
            "events",
            "description",
            "organization",
            "status",
            "failing_since",
            "disabled_at",
            "previous_secret_valid_until",
            "created_at",
        ]


class EndpointWithSecretSerializer(EndpointSerializer):
    secret = serializers.CharField(help_text="whsec_… signing secret, shown this once.")

    class Meta(EndpointSerializer.Meta):
        fields = [*EndpointSerializer.Meta.fields, "secret"]


class EndpointCreateSerializer(serializers.Serializer):
    url = StrictCharField(max_length=500, help_text="https:// and a public address.")
    events = serializers.ListField(
        child=StrictCharField(max_length=40),
        min_length=1,
        max_length=len(EVENT_NAMES),
        help_text=", ".join(EVENT_NAMES),
    )
    description = StrictCharField(max_length=200, required=False, allow_blank=True, default="")
    organization = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Lab admins: an organisation's id, or null for every organisation. Partner admins: leave out.",
    )


class DeliverySerializer(serializers.ModelSerializer):
    event_id = serializers.CharField(
        source="event.message_id", help_text="The webhook-id header; stable across retries."
    )
    type = serializers.CharField(source="event.type")

    class Meta:
        model = Delivery
        fields = [
            "id",
            "event_id",
            "type",
            "status",
            "attempts",
            "last_attempt_at",
            "last_status_code",
            "last_latency_ms",
            "last_error",
            "response_excerpt",
            "next_attempt_at",
            "delivered_at",
            "created_at",
        ]


def _with_secret(endpoint: WebhookEndpoint, secret: str) -> dict[str, Any]:
    endpoint.secret = secret  # type: ignore[attr-defined]  # read by EndpointWithSecretSerializer only
    return EndpointWithSecretSerializer(endpoint).data  # type: ignore[return-value]


@extend_schema(tags=["webhooks"])
class WebhookListCreateApi(generics.ListAPIView):
    """Webhook endpoints: your organisation's (partner admins) or every one (lab admins)."""

    serializer_class = EndpointSerializer
    queryset = WebhookEndpoint.objects.none()  # for the schema; requests use get_queryset
    permission_classes = [*generics.ListAPIView.permission_classes, RoleRequired.to("POST", *WEBHOOK_MANAGERS)]

    def get_queryset(self) -> QuerySet[WebhookEndpoint]:
        return selectors.endpoint_list(user=request_user(self.request))

    @extend_schema(request=EndpointCreateSerializer, responses={201: EndpointWithSecretSerializer})
    def post(self, request: Request) -> Response:
        """Register a receiver. The answer carries its signing secret, shown this once."""
        serializer = EndpointCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        user = request_user(request)
        organization: Organization | None = None
        if data.pop("organization") is not None:
            organization = (
                selectors.endpoint_organization_choices(user=user)
                .filter(pk=serializer.validated_data["organization"])
                .first()
            )
            if organization is None:
                raise serializers.ValidationError({"organization": ["No such organisation you may choose."]})
        endpoint, secret = services.endpoint_create(actor=user, organization=organization, **data)
        return Response(_with_secret(endpoint, secret), status=status.HTTP_201_CREATED)


@extend_schema(tags=["webhooks"])
class WebhookDetailApi(generics.RetrieveAPIView):
    serializer_class = EndpointSerializer

    def get_object(self) -> WebhookEndpoint:
        return selectors.endpoint_get(user=request_user(self.request), pk=self.kwargs["pk"])


@extend_schema(tags=["webhooks"])
class WebhookRotateSecretApi(APIView):
    @extend_schema(request=None, responses={200: EndpointWithSecretSerializer})
    def post(self, request: Request, pk: int) -> Response:
        """A new signing secret, shown this once; the old one stays valid for 24 hours."""
        endpoint = selectors.endpoint_get(user=request_user(request), pk=pk)
        endpoint, secret = services.endpoint_rotate_secret(actor=request_user(request), endpoint=endpoint)
        return Response(_with_secret(endpoint, secret))


@extend_schema(tags=["webhooks"])
class WebhookDeliveryListApi(generics.ListAPIView):
    """The endpoint's delivery log, newest first: status code, latency, response excerpt, attempts."""

    serializer_class = DeliverySerializer
    queryset = Delivery.objects.none()  # for the schema

    def get_queryset(self) -> QuerySet[Delivery]:
        user = request_user(self.request)
        endpoint = selectors.endpoint_get(user=user, pk=self.kwargs["pk"])
        return selectors.delivery_list(user=user, endpoint=endpoint)


@extend_schema(tags=["webhooks"])
class DeliveryResendApi(APIView):
    @extend_schema(request=None, responses={202: DeliverySerializer})
    def post(self, request: Request, pk: int) -> Response:
        """Send the event again with the same webhook-id (receivers deduplicate on it)."""
        delivery = selectors.delivery_get(user=request_user(request), pk=pk)
        delivery = services.delivery_resend(actor=request_user(request), delivery=delivery)
        delivery = selectors.delivery_get(user=request_user(request), pk=pk)
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
