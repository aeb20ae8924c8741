"""The incident report form, and the lab's kill-switch and resolution forms on an incident's page."""

from __future__ import annotations

from typing import Any

from django import forms

from accounts.models import Organization
from models_registry.models import Checkpoint
from research.models import Incident
from research.services.incidents import ACTION_REASON_MAX_CHARS, DESCRIPTION_MAX_CHARS, TEXT_MAX_CHARS, TITLE_MAX_CHARS


class CheckpointsField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Checkpoint) -> str:
        return obj.label


class CheckpointWithStatusField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Checkpoint) -> str:
        return f"{obj.label} ({obj.get_status_display().lower()})"


class MomentInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self) -> None:
        super().__init__(format="%Y-%m-%dT%H:%M")


class IncidentForm(forms.Form):
    organization = forms.ModelChoiceField(
        queryset=Organization.objects.filter(kind=Organization.Kind.PARTNER, active=True).order_by("name"),
        empty_label="Choose the partner",
        label="Partner organisation",
        help_text="The partner whose use of the checkpoints the incident concerns.",
        error_messages={
            "required": "Name the partner organisation the incident concerns.",
            "invalid_choice": "Choose a partner from the list.",
        },
    )
    title = forms.CharField(
        max_length=TITLE_MAX_CHARS,
        help_text="What happened, in a line.",
        error_messages={"required": "Give the incident a title."},
    )
    description = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8}),
        max_length=DESCRIPTION_MAX_CHARS,
        help_text="What happened, how it was found, what was affected and what has been done so far.",
        error_messages={"required": "Describe what happened."},
    )
    discovered_at = forms.DateTimeField(
        label="Discovered (UTC)",
        widget=MomentInput(),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"],
        help_text="When your organisation found out, in UTC.",
        error_messages={"required": "Say when it was discovered.", "invalid": "Enter a date and time."},
    )
    severity = forms.ChoiceField(
        choices=[("", "Choose a severity"), *Incident.Severity.choices],
        error_messages={"required": "Choose a severity.", "invalid_choice": "Choose a severity from the list."},
    )
    checkpoints = CheckpointsField(
        queryset=Checkpoint.objects.order_by("parameter_count"),
        widget=forms.CheckboxSelectMultiple,
        error_messages={
            "required": "Choose the checkpoints the incident concerns.",
            "invalid_choice": "Choose checkpoints from the list.",
            "invalid_pk_value": "Choose checkpoints from the list.",
        },
    )

    def __init__(self, *args: Any, names_organization: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not names_organization:  # a partner reports its own organisation's incidents
            del self.fields["organization"]


class IncidentActForm(forms.Form):
    """Embargo or withdraw one of the incident's checkpoints: the button pressed is the action."""

    checkpoint = CheckpointWithStatusField(
        queryset=Checkpoint.objects.none(),
        empty_label=None,
        error_messages={"invalid_choice": "Choose one of the incident's checkpoints."},
    )
    action = forms.ChoiceField(
        choices=[("embargo", "Embargo"), ("withdraw", "Withdraw")],
        error_messages={"required": "Choose embargo or withdraw.", "invalid_choice": "Choose embargo or withdraw."},
    )
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        max_length=ACTION_REASON_MAX_CHARS,
        help_text="Partners and auditors read it, after \u201cIncident INC-\u2026:\u201d.",
        error_messages={"required": "Give a reason (at least a few words); partners and auditors read it."},
    )

    def __init__(self, *args: Any, incident: Incident, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        checkpoint = self.fields["checkpoint"]
        assert isinstance(checkpoint, forms.ModelChoiceField)
        checkpoint.queryset = incident.checkpoints.order_by("parameter_count")


class IncidentResolveForm(forms.Form):
    outcome = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=TEXT_MAX_CHARS,
        help_text="What the lab concluded and did. The partner and auditors read it.",
        error_messages={"required": "Say what the lab concluded."},
    )
