"""The finding form, its revision, and the lab's two review forms. The service checks everything again and
is the authority: these only shape the input and put the service's refusals next to the right field."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.files.uploadedfile import UploadedFile

from agreements.models import Obligation
from core.filters import DayInput
from models_registry.models import Checkpoint
from research.models import Finding
from research.selectors.findings import FindingFormOptions
from research.services.findings import MAX_ATTACHMENTS, SUMMARY_MAX_CHARS, TITLE_MAX_CHARS


class MultipleFileInput(forms.FileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Several files in one input (Django's documented pattern); the list may be empty."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput(attrs={"accept": "application/pdf,.pdf"}))
        kwargs.setdefault("required", False)
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> list[UploadedFile]:
        one = super().clean
        files = data if isinstance(data, (list, tuple)) else [data]
        return [one(item, initial) for item in files if item]


class JobIdsField(forms.TypedMultipleChoiceField):
    """Job numbers: the listed jobs are offered, and any number is passed on to the service, which answers
    404 for one that is not the organisation's (as the API does), rather than this form saying which exist."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("coerce", int)
        kwargs.setdefault("required", False)
        kwargs.setdefault("widget", forms.CheckboxSelectMultiple)
        super().__init__(*args, **kwargs)

    def valid_value(self, value: Any) -> bool:
        return str(value).isdigit() and 0 < int(value) < 2**63


class CheckpointsField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Checkpoint) -> str:
        return obj.label


class ObligationField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Obligation) -> str:
        return f"{obj.reference} · {obj.description} · due {obj.due_at:%Y-%m-%d}"


ATTACHMENTS_HELP = f"Up to {MAX_ATTACHMENTS} PDFs, each at most 20 MB. They are only ever downloaded, never shown."
SUMMARY_HELP = (
    f"Markdown: headings, lists, links, tables and code. Images and HTML are not shown. "
    f"Up to {SUMMARY_MAX_CHARS:,} characters."
)


class FindingForm(forms.Form):
    title = forms.CharField(max_length=TITLE_MAX_CHARS, error_messages={"required": "Give the finding a title."})
    category = forms.ChoiceField(
        choices=[("", "Choose a category"), *Finding.Category.choices],
        error_messages={"required": "Choose a category.", "invalid_choice": "Choose a category from the list."},
    )
    checkpoints = CheckpointsField(
        queryset=Checkpoint.objects.none(),  # set per organisation in __init__
        widget=forms.CheckboxSelectMultiple,
        error_messages={
            "required": "Choose the checkpoints this finding is about.",
            "invalid_choice": "Choose checkpoints from the list.",
            "invalid_pk_value": "Choose checkpoints from the list.",
        },
    )
    summary = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 12}),
        help_text=SUMMARY_HELP,
        strip=False,
        error_messages={"required": "Summarise the finding."},
    )
    cited_jobs = JobIdsField(label="Jobs cited", help_text="Your organisation's recent jobs that succeeded.")
    obligation = ObligationField(
        queryset=Obligation.objects.none(),
        required=False,
        empty_label="None: this finding fulfils no obligation",
        label="Fulfils obligation",
        help_text="A report your organisation owes under its agreement. Submitting closes it.",
        error_messages={"invalid_choice": "Choose an open obligation from the list, or none."},
    )
    publication_venue = forms.CharField(
        max_length=200,
        required=False,
        label="Venue",
        help_text="Where you intend to publish (a journal, a conference, a preprint server).",
    )
    publication_date = forms.DateField(
        required=False,
        widget=DayInput,
        label="Publication date",
        error_messages={"invalid": "Enter a date, such as 2027-03-01."},
    )
    attachments = MultipleFileField(label="PDF attachments", help_text=ATTACHMENTS_HELP)

    def __init__(self, *args: Any, options: FindingFormOptions, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        checkpoints = self.fields["checkpoints"]
        assert isinstance(checkpoints, forms.ModelMultipleChoiceField)
        checkpoints.queryset = Checkpoint.objects.filter(pk__in=[c.pk for c in options.checkpoints]).order_by(
            "parameter_count"
        )
        obligation = self.fields["obligation"]
        assert isinstance(obligation, forms.ModelChoiceField)
        obligation.queryset = Obligation.objects.filter(pk__in=[o.pk for o in options.obligations]).order_by("due_at")
        jobs = self.fields["cited_jobs"]
        assert isinstance(jobs, JobIdsField)
        jobs.choices = [(job.pk, f"#{job.pk}") for job in options.jobs]
        if options.prepublication_days:
            self.fields["publication_date"].help_text = (
                f"At least {options.prepublication_days} days from now: the lab reviews a paper that long before "
                "it is published. Leave both empty if no publication is planned."
            )
        else:
            self.fields[
                "publication_date"
            ].help_text = "Planning a publication needs an active agreement, whose terms set the review period."

    def clean_summary(self) -> str:
        return str(self.cleaned_data["summary"]).replace("\r\n", "\n")


class FindingReviseForm(forms.Form):
    title = forms.CharField(max_length=TITLE_MAX_CHARS, error_messages={"required": "Give the finding a title."})
    summary = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 14}),
        help_text=SUMMARY_HELP,
        strip=False,
        error_messages={"required": "Summarise the finding."},
    )
    note = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        max_length=4000,
        label="Note to the lab",
        help_text="Optional: what you changed.",
    )
    attachments = MultipleFileField(label="More PDF attachments", help_text=ATTACHMENTS_HELP)

    def clean_summary(self) -> str:
        return str(self.cleaned_data["summary"]).replace("\r\n", "\n")


class FindingReviewForm(forms.Form):
    """Acknowledge, request changes or accept: the button pressed is the action."""

    action = forms.ChoiceField(
        choices=[("acknowledge", "Acknowledge"), ("request_changes", "Request changes"), ("accept", "Accept")],
        error_messages={"required": "Choose an action.", "invalid_choice": "Choose an action from the buttons."},
    )
    comment = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        max_length=4000,
        help_text="The partner reads this. Required when you request changes: say what should change.",
    )


class PublicationReviewForm(forms.Form):
    answer = forms.ChoiceField(
        choices=[("no_objection", "No objection"), ("objection", "Object")],
        error_messages={"required": "Choose an answer.", "invalid_choice": "Choose an answer from the buttons."},
    )
    reasons = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        max_length=4000,
        label="Reasons",
        help_text="Required for an objection: the partner reads them.",
    )
