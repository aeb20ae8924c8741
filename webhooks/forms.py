"""The endpoint registration form. The service validates the URL and events again (and the API's input)."""

from __future__ import annotations

from typing import Any

from django import forms

from accounts.models import Organization
from webhooks.models import EVENT_TYPES

ALL_ORGANIZATIONS = ""


class EndpointForm(forms.Form):
    url = forms.CharField(
        label="Receiver URL",
        max_length=500,
        widget=forms.URLInput(attrs={"placeholder": "https://hooks.example.org/modelpact", "autocomplete": "off"}),
        help_text="https:// and a public address. ModelPact POSTs signed JSON here (Standard Webhooks).",
        error_messages={"required": "Give the receiver's URL."},
    )
    events = forms.MultipleChoiceField(
        choices=EVENT_TYPES,
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one event.", "invalid_choice": "Choose events from the list."},
    )
    description = forms.CharField(max_length=200, required=False, help_text="What this receiver is, for your team.")
    organization = forms.ChoiceField(
        label="Whose events", required=False, help_text="One organisation's events, or every organisation's."
    )

    def __init__(self, *args: Any, organizations: list[Organization] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if organizations is None:  # partner admins: their own organisation, always
            del self.fields["organization"]
        else:
            choices = [(ALL_ORGANIZATIONS, "Every organisation")] + [(str(o.pk), o.name) for o in organizations]
            self.fields["organization"].choices = choices  # type: ignore[attr-defined]
