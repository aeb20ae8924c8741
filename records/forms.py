from __future__ import annotations

from typing import Any, cast

from django import forms
from django.http import HttpRequest
from django.utils.datastructures import MultiValueDict

from accounts.models import Organization
from audit import events
from core.filters import CreatedRangeForm


class AuditFilterForm(CreatedRangeForm):
    field_order = ["organization", "actor", "action", "created_after", "created_before"]

    organization = forms.ModelChoiceField(
        queryset=Organization.objects.order_by("name"),
        required=False,
        empty_label="All organisations",
        label="Organisation",
    )
    actor = forms.EmailField(required=False, label="Actor email")
    action = forms.ChoiceField(required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["action"]).choices = [("", "All actions")] + [
            (a, a) for a in events.all_actions()
        ]
        self.fields["action"].error_messages["invalid_choice"] = "Choose an action from the list."


UPLOAD_LIMIT = 20 * 1024 * 1024  # DESIGN.md: uploads ≤ 20 MB


class AuditExportForm(AuditFilterForm):
    """The audit page's filters plus the file format; the export holds exactly what the page lists."""

    format = forms.ChoiceField(choices=[("csv", "CSV"), ("pdf", "PDF (sealed)")], initial="csv")


class EvidenceBundleForm(forms.Form):
    organization = forms.ModelChoiceField(
        queryset=Organization.objects.none(),
        empty_label="Choose a partner",
        label="Partner organisation",
        error_messages={"required": "Choose the partner organisation to export evidence for."},
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        organization = cast("forms.ModelChoiceField[Organization]", self.fields["organization"])
        organization.queryset = Organization.objects.filter(kind=Organization.Kind.PARTNER).order_by("name")


# For a body refused before it is read: only its declared size is known.
UPLOAD_TOO_LARGE = "The file is over 20 MB; records are at most 20 MB, so this is not one of ours."
# Headers and the multipart boundaries around the file: a body this much over the limit may still hold
# a file within it.
UPLOAD_ENVELOPE = 64 * 1024


def upload_declared_too_large(request: HttpRequest) -> bool:
    """Whether the request declares a body too large to hold a file within the limit (Content-Length)."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    return declared.isdigit() and int(declared) > UPLOAD_LIMIT + UPLOAD_ENVELOPE


class RecordVerifyForm(forms.Form):
    file = forms.FileField(
        label="Record (PDF)",
        help_text="A record or export downloaded from ModelPact; at most 20 MB.",
        error_messages={"required": "Choose the PDF to check.", "empty": "The file is empty."},
    )

    def clean_file(self) -> object:
        upload = self.cleaned_data["file"]
        if upload.size > UPLOAD_LIMIT:
            raise forms.ValidationError(
                f"The file is {upload.size / 1e6:.1f} MB; records are at most 20 MB, so this is not one of ours."
            )
        return upload

    @classmethod
    def refused(cls, message: str) -> RecordVerifyForm:
        """The form shown again for an upload refused without reading it, the reason next to the file field."""
        form = cls(data={}, files=MultiValueDict())
        form.full_clean()  # bound and empty: its errors are ours to set
        form.errors.clear()
        form.add_error("file", message)
        return form
