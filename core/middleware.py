"""HTTP response headers that every ModelPact response carries, static files included."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase

# Browser features ModelPact never uses, switched off for every page and any frame in it, so neither
# a page nor a script injected into one can ask for them. Only names Chromium recognises: it logs an
# error to the console for each unknown one. Left on: clipboard-write (the "Copy" button on the API
# tokens page), fullscreen, and the WebAuthn features (passkeys are an allauth option).
DISABLED_FEATURES = (
    "accelerometer",
    "autoplay",
    "browsing-topics",
    "camera",
    "display-capture",
    "encrypted-media",
    "gamepad",
    "geolocation",
    "gyroscope",
    "hid",
    "idle-detection",
    "interest-cohort",
    "local-fonts",
    "magnetometer",
    "microphone",
    "midi",
    "otp-credentials",
    "payment",
    "picture-in-picture",
    "screen-wake-lock",
    "serial",
    "usb",
    "window-management",
    "xr-spatial-tracking",
)
PERMISSIONS_POLICY = ", ".join(f"{feature}=()" for feature in DISABLED_FEATURES)


class PermissionsPolicyMiddleware:
    """Adds the Permissions-Policy header.

    Listed above whitenoise's middleware in MIDDLEWARE: whitenoise answers static files without
    calling the middleware below it, so only what sits above it sees those responses.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response
