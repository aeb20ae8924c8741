"""The OpenAPI schema class: every operation documents the API's shared error responses."""

from __future__ import annotations

from typing import Any, Literal

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse

from core.api import ErrorSerializer

DEFAULT_ERRORS = {
    "400": "The request is invalid; details names each field.",
    "401": "No credentials, or a token that is unknown, revoked or expired.",
    "403": "Your role does not allow this.",
    "404": "It does not exist, or it belongs to another organisation.",
    "429": "Throttled (code throttled, see Retry-After).",
}


class ApiAutoSchema(AutoSchema):
    """Documents the shared error responses on every operation, so clients (and schemathesis) know them."""

    def _get_response_bodies(self, direction: Literal["request", "response"] = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        errors = dict(DEFAULT_ERRORS)
        if self.method in ("POST", "PUT", "PATCH"):
            errors["415"] = "The body's Content-Type is not one this operation reads."
        for status, description in errors.items():
            if status not in responses:
                responses[status] = self._get_response_for_code(  # type: ignore[no-untyped-call]  # unannotated upstream
                    OpenApiResponse(ErrorSerializer, description=description), status, direction=direction
                )
        return responses


# drf-spectacular leaves its extension base's __init_subclass__ unannotated.
class TokenAuthenticationScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """Tells clients how accounts.api.TokenAuthentication (knox underneath) is used."""

    target_class = "accounts.api.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <key>`, with a key from the API tokens page (or `manage.py token_create`).",
        }
