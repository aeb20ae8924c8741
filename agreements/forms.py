"""Forms for the agreement pages: they parse what the browser sends; the services decide what is allowed.

Fields the services validate themselves (names, ranges, dates in the past, reasons) are optional here
so that the service's own message, which says what to change, is the one shown next to the field.
"""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.db.models import QuerySet

from accounts.models import Organization
from agreements.models import OBLIGATION_TERM_RANGES, Agreement, TemplateVersion
from agreements.services import AgreementTerms, ObligationTerms
from core.validators import PURPOSE_MAX_CHARS, PURPOSE_MIN_CHARS, clean_purpose
from models_registry.models import Checkpoint


def _normalise_newlines(text: str) -> str:
    # Browsers send textarea lines as CRLF; store LF so a version's SHA-256 does not depend on the browser.
    return text.replace("\r\n", "\n").replace("\r", "\n")


class MarkdownField(forms.CharField):
    widget = forms.Textarea

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("strip", False)
        super().__init__(**kwargs)

    def to_python(self, value: object) -> str:
        # strip=False and the default empty_value "": never None.
        return _normalise_newlines(cast(str, super().to_python(value)))


class TermField(forms.IntegerField):
    """One obligation term: a whole number the service checks against its range (message next to the field)."""

    widget = forms.NumberInput(attrs={"inputmode": "numeric", "step": "1"})
    default_error_messages = {"invalid": "Enter a whole number, like 30."}

    def __init__(self, *, name: str, label: str, unit: str, help_text: str) -> None:
        low, high = OBLIGATION_TERM_RANGES[name]
        super().__init__(required=False, label=label, help_text=f"{help_text} From {low} to {high} {unit}.")
        # The browser shows the range; the service is what enforces it, with the same message for any client.
        self.widget.attrs.update({"min": low, "max": high, "data-term": name})


class ObligationTermsForm(forms.Form):
    """The four obligation terms legal edits beside the text; the text states them as `obligations.*`."""

    findings_report_days = TermField(
        name="findings_report_days",
        label="Findings report due (days)",
        unit="days",
        help_text="After each checkpoint's access starts.",
    )
    incident_report_hours = TermField(
        name="incident_report_hours",
        label="Incidents reported within (hours)",
        unit="hours",
        help_text="After the partner discovers one.",
    )
    final_report_days = TermField(
        name="final_report_days",
        label="Final report due (days before the end)",
        unit="days",
        help_text="Before the term ends.",
    )
    prepublication_review_days = TermField(
        name="prepublication_review_days",
        label="Paper shared before publishing (days)",
        unit="days",
        help_text="For the lab's pre-publication review.",
    )

    def terms(self) -> ObligationTerms:
        """The terms as posted; one not posted at all keeps its initial value (a blank one is blank)."""
        return ObligationTerms(
            **{
                name: self.cleaned_data.get(name) if self.add_prefix(name) in self.data else self.initial.get(name)
                for name in OBLIGATION_TERM_RANGES
            }
        )

    @staticmethod
    def initial_for(version: TemplateVersion | None) -> dict[str, int | None]:
        return (ObligationTerms.of(version) if version else ObligationTerms.defaults()).as_dict()

    @property
    def term_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in OBLIGATION_TERM_RANGES]


class TemplateCreateForm(ObligationTermsForm):
    name = forms.CharField(max_length=200, required=False, help_text="e.g. “GPT-2 Model Sharing Agreement”.")
    description = forms.CharField(
        required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}), help_text="For lab staff only."
    )
    body = MarkdownField(label="Agreement text (Markdown)")


class TemplateVersionForm(ObligationTermsForm):
    body = MarkdownField(label="Agreement text (Markdown)")


class ObligationExtendForm(forms.Form):
    """The lab's extension of a due date; the service checks the date and the reason and says what to change."""

    due_on = forms.DateField(
        required=False,
        label="New due date",
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        help_text="Due at the start of that day (00:00 UTC). Later than the current due date and today.",
        error_messages={"invalid": "Enter a date, like 2027-03-31."},
    )
    reason = forms.CharField(
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        label="Reason",
        help_text="Required. The partner and auditors read it.",
        error_messages={"max_length": "Keep the reason under 2,000 characters."},
    )


class DiffForm(forms.Form):
    left = forms.ModelChoiceField(queryset=TemplateVersion.objects.none(), label="Older", empty_label=None)
    right = forms.ModelChoiceField(queryset=TemplateVersion.objects.none(), label="Newer", empty_label=None)

    def __init__(self, *args: Any, versions: QuerySet[TemplateVersion], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("left", "right"):
            field = cast("forms.ModelChoiceField[TemplateVersion]", self.fields[name])
            field.queryset = versions
            # Relabelling per instance is Django's documented way; the stubs see a read-only method.
            field.label_from_instance = lambda v: f"{v.label} · {v.get_status_display()}"  # type: ignore[method-assign,assignment]
            field.error_messages["invalid_choice"] = "Choose one of this template's versions."


class WholeNumberField(forms.IntegerField):
    """An integer that may be typed with thousands separators: “50,000” or “50 000”."""

    # A text box, not type=number: browsers refuse "50,000" in a number input without saying why.
    widget = forms.TextInput(attrs={"inputmode": "numeric", "autocomplete": "off"})
    default_error_messages = {"invalid": "Enter a whole number, like 50000."}

    def to_python(self, value: object) -> int | None:
        if isinstance(value, str):
            value = value.replace(",", "").replace("_", "").replace(" ", "").replace("\u202f", "")
        return super().to_python(value)


class CheckpointChoiceField(forms.ModelMultipleChoiceField):
    widget = forms.CheckboxSelectMultiple

    def label_from_instance(self, checkpoint: Checkpoint) -> str:
        return f"{checkpoint.display_name} · {checkpoint.size_label} parameters · {checkpoint.slug}"


class AgreementForm(forms.Form):
    organization: forms.ModelChoiceField[Organization] = forms.ModelChoiceField(
        queryset=None,
        label="Organisation",
        empty_label="Choose a partner…",
        help_text="Only active partner organisations are listed.",
    )
    template_version: forms.ModelChoiceField[TemplateVersion] = forms.ModelChoiceField(
        queryset=None,
        empty_label="Choose a published version…",
        label="Template version",
        error_messages={"invalid_choice": "Choose a published template version from the list."},
    )
    checkpoints = CheckpointChoiceField(
        queryset=None,
        required=False,
        error_messages={
            "invalid_choice": "Choose checkpoints from the list.",
            "invalid_pk_value": "Choose checkpoints from the list.",
        },
        help_text="The checkpoints this agreement grants access to once it is active.",
    )
    effective_date = forms.DateField(
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        error_messages={
            "required": "Enter the date the agreement takes effect.",
            "invalid": "Enter a date, like 2025-07-01.",
        },
    )
    term_months = WholeNumberField(label="Term (months)", help_text="From 1 to 120.")
    daily_token_quota = WholeNumberField(
        label="Daily token quota", help_text="Tokens the partner may generate per day."
    )
    purpose = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
        label="Research purpose",
        help_text="Appears in the agreement as the only purpose the licence is granted for.",
    )
    replaces_amended = forms.BooleanField(
        required=False,
        initial=True,
        label="When active, this amendment replaces the agreement it amends",
        help_text="Untick to keep the original agreement active alongside this one.",
    )

    def __init__(
        self,
        *args: Any,
        organizations: QuerySet | None,
        versions: QuerySet[TemplateVersion],
        checkpoints: QuerySet[Checkpoint],
        amendment: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if organizations is None:
            del self.fields["organization"]  # an agreement's organisation never changes
        else:
            organization = cast("forms.ModelChoiceField[Organization]", self.fields["organization"])
            organization.queryset = organizations
            organization.error_messages["invalid_choice"] = "Choose a partner organisation from the list."
        template_version = cast("forms.ModelChoiceField[TemplateVersion]", self.fields["template_version"])
        template_version.queryset = versions
        newest: dict[int, TemplateVersion] = {}
        for version in versions:
            if version.template_id not in newest or version.number > newest[version.template_id].number:
                newest[version.template_id] = version

        def version_label(v: TemplateVersion) -> str:
            latest = newest.get(v.template_id, v)
            older = f" (older: {latest.label} is the latest)" if latest.number > v.number else " (latest)"
            return f"{v.template.name} · {v.label}{older}"

        template_version.label_from_instance = version_label  # type: ignore[method-assign,assignment]
        cast(CheckpointChoiceField, self.fields["checkpoints"]).queryset = checkpoints
        if not amendment:
            del self.fields["replaces_amended"]

    def clean_purpose(self) -> str:
        # The rule the service applies too; checked here as well because only visible characters count.
        try:
            return clean_purpose(self.cleaned_data["purpose"])
        except forms.ValidationError as exc:
            raise forms.ValidationError(exc.message_dict["purpose"]) from None

    def service_kwargs(self) -> dict[str, Any]:
        """The agreement_create / agreement_update arguments: the organisation, the terms, and the
        amendment's choice of replacing what it amends."""
        data = dict(self.cleaned_data)
        kwargs: dict[str, Any] = {
            "terms": AgreementTerms(
                template_version=data["template_version"],
                checkpoints=list(data["checkpoints"]),
                effective_date=data["effective_date"],
                term_months=data["term_months"],
                daily_token_quota=data["daily_token_quota"],
                purpose=data["purpose"],
            )
        }
        for name in ("organization", "replaces_amended"):
            if name in self.fields:
                kwargs[name] = data[name]
        return kwargs

    @staticmethod
    def initial_for(agreement: Agreement) -> dict:
        return {
            "template_version": agreement.template_version_id,
            "checkpoints": [c.pk for c in agreement.checkpoints.all()],
            "effective_date": agreement.effective_date,
            "term_months": agreement.term_months,
            "daily_token_quota": agreement.daily_token_quota,
            "purpose": agreement.purpose,
            "replaces_amended": agreement.replaces_amended,
        }


class AgreementFilterForm(forms.Form):
    organization: forms.ModelChoiceField[Organization] = forms.ModelChoiceField(
        queryset=None, required=False, label="Organisation", empty_label="All organisations"
    )
    status = forms.ChoiceField(required=False)

    def __init__(self, *args: Any, organizations: QuerySet | None, statuses: list, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if organizations is None:
            del self.fields["organization"]  # partners only ever see their own
        else:
            organization = cast("forms.ModelChoiceField[Organization]", self.fields["organization"])
            organization.queryset = organizations
            organization.error_messages["invalid_choice"] = "Choose an organisation from the list."
        cast(forms.ChoiceField, self.fields["status"]).choices = [("", "Any status"), *statuses]
        self.fields["status"].error_messages["invalid_choice"] = "Choose a status from the list."


class ReasonForm(forms.Form):
    reason = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 3}))

    def __init__(self, *args: Any, label: str = "Reason", help_text: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reason"].label = label
        self.fields["reason"].help_text = help_text


class SignForm(forms.Form):
    consent = forms.BooleanField(
        required=False, label="I have read the disclosure above and agree to sign electronically"
    )
    full_name = forms.CharField(
        required=False,
        max_length=200,
        label="Full name",
        help_text="Typed as your signature.",
        widget=forms.TextInput(attrs={"autocomplete": "name"}),
    )
    title = forms.CharField(
        required=False,
        max_length=200,
        label="Title",
        help_text="Your position, e.g. Director of Research.",
        widget=forms.TextInput(attrs={"autocomplete": "organization-title"}),
    )
    # Hidden fields have no place to show an error, so they accept anything; the service judges them.
    document_sha256 = forms.CharField(required=False, widget=forms.HiddenInput)
    time_zone = forms.CharField(required=False, widget=forms.HiddenInput)


class RequestedCheckpointsField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, checkpoint: Checkpoint) -> str:
        return checkpoint.label


class AccessRequestForm(forms.Form):
    checkpoints = RequestedCheckpointsField(
        queryset=Checkpoint.objects.order_by("parameter_count"),
        widget=forms.CheckboxSelectMultiple,
        error_messages={
            "required": "Choose at least one checkpoint.",
            "invalid_choice": "Choose checkpoints from the list.",
            "invalid_pk_value": "Choose checkpoints from the list.",
        },
    )
    purpose = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}),
        min_length=PURPOSE_MIN_CHARS,
        max_length=PURPOSE_MAX_CHARS,
        strip=True,
        help_text="What you will use the checkpoints for, in 20 to 4,000 characters. Legal at the lab reads this "
        "and it becomes the purpose in your agreement.",
        error_messages={
            "required": "Describe the research purpose in at least 20 characters.",
            "min_length": "Describe the research purpose in at least 20 characters (it has %(show_value)d).",
            "max_length": "Keep the purpose to 4,000 characters (it has %(show_value)d).",
        },
    )

    def clean_purpose(self) -> str:
        # The service's rule, for a message next to the field: the 20 characters must be visible ones.
        try:
            return clean_purpose(self.cleaned_data["purpose"])
        except forms.ValidationError as exc:
            raise forms.ValidationError(exc.message_dict["purpose"]) from None


class RejectForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        max_length=2000,
        label="Reason for rejecting",
        help_text="The partner sees this and may apply again.",
        error_messages={"required": "Give the partner a reason (at least a few words)."},
    )
