"""The plumbing every API view shares: one error shape, per-token throttling, pagination, filters.

Every error the API answers, whatever raised it (a serializer, a selector's Http404, a service's
ValidationError or PermissionDenied, the choke point's refusal, authentication, throttling or an
unknown path), has the shape {"error": {"code": ..., "message": ..., "details": {...}}}.

REST_FRAMEWORK names classes from here that rest_framework.views imports while it loads, so this
module must not import rest_framework.views or generics at the top (the schema class is in api_schema.py).
"""

from __future__ import annotations

import codecs
import logging
import math
import re
from collections.abc import Mapping
from typing import Any, cast

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import (
    BadRequest,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, JsonResponse
from django.urls import Resolver404, resolve
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django_filters.rest_framework import DjangoFilterBackend
from knox.models import AuthToken
from rest_framework import exceptions, parsers, serializers
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.utils import json as drf_json

from core.errors import DomainError

logger = logging.getLogger(__name__)

# DRF's exception classes, by the stable code a program can branch on.
_CODES: list[tuple[type[exceptions.APIException], str]] = [
    (exceptions.ValidationError, "invalid"),
    (exceptions.ParseError, "malformed_request"),
    (exceptions.NotAuthenticated, "not_authenticated"),
    (exceptions.AuthenticationFailed, "authentication_failed"),
    (exceptions.PermissionDenied, "permission_denied"),
    (exceptions.NotFound, "not_found"),
    (exceptions.MethodNotAllowed, "method_not_allowed"),
    (exceptions.NotAcceptable, "not_acceptable"),
    (exceptions.UnsupportedMediaType, "unsupported_media_type"),
    (exceptions.Throttled, "throttled"),
]


class ApiError(exceptions.APIException):
    """An error with its own code and details, e.g. 409 idempotency_conflict or 429 quota_exceeded."""

    def __init__(
        self,
        *,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status
        self.error_code = code
        self.details = details or {}
        self.headers = headers or {}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _field_errors(detail: Any) -> Any:
    """ErrorDetail trees to plain strings, keeping the field names as keys."""
    if isinstance(detail, dict):
        return {str(key): _field_errors(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [_field_errors(item) for item in detail]
    return str(detail)


def _flatten(errors: Any, prefix: str = "") -> list[str]:
    if isinstance(errors, dict):
        return [line for key, value in errors.items() for line in _flatten(value, f"{prefix}{key}.")]
    if isinstance(errors, list):
        if all(isinstance(item, str) for item in errors):
            return [f"{prefix.rstrip('.')}: {' '.join(errors)}" if prefix else " ".join(errors)]
        return [line for index, item in enumerate(errors) for line in _flatten(item, f"{prefix}{index}.")]
    return [f"{prefix.rstrip('.')}: {errors}" if prefix else str(errors)]


def validation_message(details: dict[str, Any]) -> str:
    """One sentence naming every field that needs a change, for people reading logs and curl output."""
    lines = [line.replace("non_field_errors: ", "").rstrip(".") for line in _flatten(details)]
    return "Check the request: " + "; ".join(lines) + "." if lines else "Check the request."


def _django_validation_details(exc: DjangoValidationError) -> dict[str, list[str]]:
    if hasattr(exc, "error_dict"):
        return {
            ("non_field_errors" if field == "__all__" else field): list(messages)
            for field, messages in exc.message_dict.items()
        }
    return {"non_field_errors": list(exc.messages)}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """REST_FRAMEWORK's EXCEPTION_HANDLER: every error, one shape."""
    from rest_framework.views import set_rollback  # here: rest_framework.views imports this module's classes

    if isinstance(exc, DomainError):
        exc = ApiError(status=exc.status, code=exc.code, message=exc.message, details=exc.details, headers=exc.headers)
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(_django_validation_details(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound("Not found: it does not exist, or it is not yours to see.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or "Your role does not allow this.")
    elif isinstance(exc, (SuspiciousOperation, BadRequest)):
        # Django's refusals of the request itself, raised wherever the body is first read: by the
        # parser, or by the CSRF check of session authentication, which reads request.POST.
        exc = request_refused_error(exc)

    if not isinstance(exc, exceptions.APIException):
        # A bug. Log it with its traceback; the client still gets the one error shape.
        logger.exception("Unhandled error in %s", context.get("view").__class__.__name__, exc_info=exc)
        set_rollback()
        return Response(error_body("server_error", "Something went wrong on our side; it has been logged."), 500)

    headers: dict[str, str] = {}
    auth_header = getattr(exc, "auth_header", None)
    if auth_header:
        headers["WWW-Authenticate"] = auth_header
    if isinstance(exc, ApiError):
        body = error_body(exc.error_code, str(exc.detail), exc.details)
        headers.update(exc.headers)
    elif isinstance(exc, exceptions.ValidationError):
        details = _field_errors(exc.detail)
        if not isinstance(details, dict):
            details = {"non_field_errors": details if isinstance(details, list) else [details]}
        body = error_body("invalid", validation_message(details), details)
    elif isinstance(exc, exceptions.Throttled):
        wait = max(1, math.ceil(exc.wait or 1))  # type: ignore[attr-defined]  # set by Throttled.__init__, not in the stubs
        headers["Retry-After"] = str(wait)
        body = error_body(
            "throttled",
            f"Too many requests with this token; retry in {wait} second{'s' if wait != 1 else ''}.",
            {"retry_after_seconds": wait},
        )
    else:
        code = next((code for cls, code in _CODES if isinstance(exc, cls)), "error")
        body = error_body(code, str(exc.detail))
    set_rollback()
    return Response(body, status=exc.status_code, headers=headers)


def request_refused_error(exc: Exception) -> ApiError:
    """413 for a body over Django's size limit, 400 for other requests Django refuses to read."""
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return ApiError(
            status=413,
            code="request_too_large",
            message=f"The request body is over the limit of {limit / 2**20:.3g} MB ({limit:,} bytes); send less.",
            details={"limit_bytes": limit},
        )
    if isinstance(exc, TooManyFieldsSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        message = f"The request has more than {limit:,} form fields; send fewer."
        return ApiError(status=400, code="malformed_request", message=message, details={"limit_fields": limit})
    if isinstance(exc, TooManyFilesSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FILES
        message = f"The request has more than {limit:,} files; send fewer."
        return ApiError(status=400, code="malformed_request", message=message, details={"limit_files": limit})
    message = "The request could not be read; check its headers and how its body is encoded."
    return ApiError(status=400, code="malformed_request", message=message)


@csrf_exempt  # a POST to a path that does not exist is a 404, not a CSRF failure page
def not_found(request: HttpRequest) -> JsonResponse:
    """Unknown paths under /api/ answer in the API's shape, not with the HTML 404 page."""
    message = f"No API endpoint at {request.path}."
    if not request.path.endswith("/"):
        try:
            resolved = resolve(request.path + "/")
        except Resolver404:
            resolved = None
        if resolved is not None and resolved.func is not not_found:
            message += f" Did you mean {request.path}/ (with the trailing slash)?"
    return JsonResponse(error_body("not_found", message), status=404)


# --- Parsing and fields ---------------------------------------------------------------------------

JSON_MAX_DEPTH = 32
# A JSON string (escapes included), for skipping strings while counting brackets.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")


def json_too_deep(text: str, limit: int = JSON_MAX_DEPTH) -> bool:
    """Whether arrays and objects nest more than `limit` levels deep in a JSON text, told without
    parsing it. Brackets inside strings do not count; on text that is not JSON the answer may be
    wrong, and the parser refuses that text anyway."""
    if text.count("[") + text.count("{") <= limit:
        return False  # most bodies: too few brackets to nest that deep
    depth = 0
    for char in _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if char in "[{" else -1
        if depth > limit:
            return True
    return False


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing nesting deeper than 32 levels with 400 malformed_request.

    Checked before json.loads runs: Python's parser recurses per level (2,000 levels raised
    RecursionError, a 500), and so would the serializers walking what it returned. No request to
    this API nests more than a few levels.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.decode(stream.read(), encoding)
            if json_too_deep(text):
                raise exceptions.ParseError(
                    f"JSON parse error - arrays or objects nest more than {JSON_MAX_DEPTH} levels deep; "
                    "no request to this API needs that many."
                )
            return drf_json.loads(text, parse_constant=drf_json.strict_constant if self.strict else None)
        except ValueError as exc:  # not JSON, or not text in the declared encoding
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
        except RecursionError:  # the depth check makes this unreachable; a 400 all the same
            raise exceptions.ParseError("JSON parse error - arrays or objects nest too deeply.") from None


class StrictCharField(serializers.CharField):
    """A CharField that takes only strings: DRF's turns 5 into "5" and 1.5 into "1.5"; this one refuses
    them, so a client that sends a number where text belongs learns of it."""

    default_error_messages = {"not_a_string": "Must be a string (text in double quotes), not {kind}."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("not_a_string", kind=_json_kind(data))
        return super().to_internal_value(data)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def rate_limit_hit(*, scope: str, ident: str) -> tuple[bool, float]:
    """Count one request of `ident` against the rate REST_FRAMEWORK names `scope` (e.g. 600/min).

    Returns whether it is allowed and the seconds until the window ends. A counter per fixed window
    in the cache (Redis in production, shared by every worker): one INCR a request, where DRF's
    SimpleRateThrottle rewrites the list of every request time in the window, which grows with the rate.
    Pages use it as well as the API, so the two share one budget.
    """
    from rest_framework.settings import api_settings

    # The stubs type rates as numbers; DRF's are strings such as "600/min".
    count, _, period = cast(str, api_settings.DEFAULT_THROTTLE_RATES[scope]).partition("/")
    limit, seconds = int(count), {"s": 1, "m": 60, "h": 3600, "d": 86400}[period[0]]
    now = timezone.now().timestamp()
    window = int(now // seconds)
    key = f"throttle:{scope}:{ident}:{seconds}:{window}"
    try:
        used = cache.incr(key)
    except ValueError:  # the window's first request
        used = 1 if cache.add(key, 1, timeout=seconds + 1) else cache.incr(key)
    return used <= limit, (window + 1) * seconds - now


def anonymous_ident(request: Any) -> str:
    """An anonymous caller is its address as the server saw it.

    Never X-Forwarded-For: a client can write any value there and get a fresh budget each time.
    Behind a proxy, the deployment sets REMOTE_ADDR from the proxy's header (see README).
    """
    return f"ip:{request.META.get('REMOTE_ADDR', '')}"


class TokenRateThrottle(BaseThrottle):
    """Requests per token (each token its own budget); per user for browser sessions, per IP anonymously.

    The rate is REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["api"] (API_THROTTLE_RATE, e.g. 600/min), read
    at each request (see rate_limit_hit).
    """

    scope = "api"

    def allow_request(self, request: Any, view: Any) -> bool:
        allowed, self._wait = rate_limit_hit(scope=self.scope, ident=self._ident(request))
        return allowed

    def wait(self) -> float:
        return self._wait

    def _ident(self, request: Any) -> str:
        if isinstance(request.auth, AuthToken):
            return f"token:{request.auth.token_key}"
        if request.user and request.user.is_authenticated:
            return f"user:{request.user.pk}"
        return anonymous_ident(request)


class AnonymousRateThrottle(TokenRateThrottle):
    """A tighter budget for anonymous callers of a public endpoint, per IP; signed-in callers pass.

    The endpoint names its rate in `throttle_scope`; the default throttle still applies beside it.
    """

    def allow_request(self, request: Any, view: Any) -> bool:
        if request.user and request.user.is_authenticated:
            return True
        self.scope = view.throttle_scope
        return super().allow_request(request, view)


class Pagination(CursorPagination):
    """50 a page (?page_size= up to 200), newest first, with next/previous links.

    Cursors, not page numbers: jobs and audit events are added all the time at the top of their
    newest-first lists, which shifts numbered pages under a client walking them (rows seen twice or
    missed), and counting every row for a page number costs more the longer an organisation works.
    A view orders by something else with a `cursor_ordering` attribute (the audit log: -seq).
    """

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200
    ordering = ("-created_at", "-id")
    invalid_cursor_message = "Invalid cursor: use the next or previous link of a page as it is."

    def get_ordering(self, request: Any, queryset: Any, view: Any) -> tuple[str, ...]:
        return tuple(getattr(view, "cursor_ordering", self.ordering))

    def paginate_queryset(self, queryset: Any, request: Any, view: Any = None) -> list[Any] | None:
        # A cursor is only base64 of a query string; its position must also be a value of the field.
        cursor = self.decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            field = queryset.model._meta.get_field(self.get_ordering(request, queryset, view)[0].lstrip("-"))
            try:
                field.to_python(cursor.position)
            except DjangoValidationError:
                raise exceptions.NotFound(self.invalid_cursor_message) from None
        return super().paginate_queryset(queryset, request, view)


class FilterBackend(DjangoFilterBackend):  # type: ignore[misc]  # django-filter ships no type hints
    """django-filter, skipped when the request names none of the view's filters (most list calls):
    building and validating its form costs more than the rest of a short list's work."""

    def filter_queryset(self, request: Any, queryset: Any, view: Any) -> Any:
        filterset_class = self.get_filterset_class(view, queryset)
        if filterset_class is None or not any(name in request.query_params for name in filterset_class.base_filters):
            return queryset
        return super().filter_queryset(request, queryset, view)


# --- OpenAPI ----------------------------------------------------------------------------------------


class ErrorDetailSerializer(serializers.Serializer[dict[str, Any]]):
    code = serializers.CharField(help_text="Stable, for programs: invalid, not_found, access_denied, ...")
    message = serializers.CharField(help_text="For people: says what to change.")
    details = serializers.DictField(help_text="For validation errors, a list of messages per field.")


class ErrorSerializer(serializers.Serializer[dict[str, Any]]):
    error = ErrorDetailSerializer()
