"""The job form and the job list's filters. Limits come from the service, which checks them again."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from django import forms
from django.contrib.humanize.templatetags.humanize import intcomma

from agreements.selectors import PartnerCheckpoint
from inference.models import GenerationJob
from inference.provenance import MAX_TEXT_CHARS, text_refusal
from inference.services import LIMITS, JobParams
from models_registry.models import Checkpoint


def _between(name: Literal["max_new_tokens", "num_samples", "top_k", "seed"]) -> str:
    low, high = LIMITS[name]
    return f"{intcomma(low)} to {intcomma(high)}"


class JobForm(forms.Form):
    PROMPT_LIMIT = LIMITS["prompt_chars"]
    checkpoint = forms.ModelChoiceField(
        # Any checkpoint is accepted here and offered only if usable: the access choke point, not the
        # form, decides, so a stale page or a crafted POST gets the refusal that names what is missing.
        queryset=Checkpoint.objects.all(),
        to_field_name="slug",
        empty_label=None,
        error_messages={"invalid_choice": "Choose a checkpoint from the list."},
    )
    prompt = forms.CharField(
        strip=False,  # leading and trailing spaces change the tokens the model sees
        # No maxlength: the browser would cut a pasted prompt without a word. The server refuses a long
        # one next to the field, and the page counts characters as they are typed.
        widget=forms.Textarea(attrs={"rows": 6}),
        help_text=f"Up to {intcomma(LIMITS['prompt_chars'])} characters. The model continues it.",
        error_messages={"required": "Write a prompt for the model to continue."},
    )
    max_new_tokens = forms.IntegerField(
        label="Max new tokens",
        min_value=LIMITS["max_new_tokens"][0],
        max_value=LIMITS["max_new_tokens"][1],
        initial=64,
        help_text=f"{_between('max_new_tokens')} per sample; prompt tokens plus these must fit the context (1,024).",
    )
    num_samples = forms.IntegerField(
        label="Samples",
        min_value=LIMITS["num_samples"][0],
        max_value=LIMITS["num_samples"][1],
        initial=1,
        help_text=f"{_between('num_samples')} continuations of the same prompt.",
    )
    temperature = forms.FloatField(
        min_value=LIMITS["temperature"][0],
        max_value=LIMITS["temperature"][1],
        initial=0.8,
        widget=forms.NumberInput(attrs={"step": "0.05"}),
        help_text="0 to 2. 0 always picks the most likely token (greedy); higher is more varied.",
    )
    top_k = forms.IntegerField(
        label="Top-k",
        min_value=LIMITS["top_k"][0],
        max_value=LIMITS["top_k"][1],
        initial=40,
        help_text=f"{_between('top_k')}. Sample from the k most likely tokens; 0 turns this off.",
    )
    top_p = forms.FloatField(
        label="Top-p",
        max_value=1,
        initial=1.0,
        widget=forms.NumberInput(attrs={"step": "0.05"}),
        help_text="Above 0, at most 1. Sample from the smallest set of tokens this likely; 1 turns this off.",
    )
    seed = forms.IntegerField(
        required=False,
        min_value=LIMITS["seed"][0],
        max_value=LIMITS["seed"][1],
        help_text=f"Optional, {_between('seed')}. The same seed and settings give the same samples.",
    )
    # One key per rendered form: a double click or a resubmitted page returns the same job.
    idempotency_key = forms.CharField(widget=forms.HiddenInput, required=False)

    def __init__(self, *args: Any, usable: list[PartnerCheckpoint] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["checkpoint"].widget.choices = [
            (row.checkpoint.slug, self.checkpoint_label(row)) for row in (usable or [])
        ]
        for name in ("max_new_tokens", "num_samples", "top_k", "seed"):
            self.fields[name].error_messages["invalid"] = "Enter a whole number."
        for name in ("temperature", "top_p"):
            self.fields[name].error_messages["invalid"] = "Enter a number, such as 0.8."
        if not self.is_bound:
            self.initial.setdefault("idempotency_key", uuid.uuid4().hex)

    @staticmethod
    def checkpoint_label(row: PartnerCheckpoint) -> str:
        checkpoint, decision = row.checkpoint, row.decision
        left = f"{intcomma(decision.quota_left)} tokens left today" if decision.allowed else "today's quota is used up"
        return f"{checkpoint.display_name} ({checkpoint.size_label}) · {checkpoint.slug} · {left}"

    def clean_idempotency_key(self) -> str | None:
        # Hidden and made by the page: a malformed one is dropped rather than shown as an error.
        key = self.cleaned_data["idempotency_key"].strip()
        return key if 1 <= len(key) <= 255 else None

    def clean_prompt(self) -> str:
        # Browsers send a textarea's line breaks as CRLF; the character count on the page sees LF.
        prompt = self.cleaned_data["prompt"].replace("\r\n", "\n")
        if not prompt.strip():
            raise forms.ValidationError("Write a prompt for the model to continue.")
        if len(prompt) > LIMITS["prompt_chars"]:
            limit = intcomma(LIMITS["prompt_chars"])
            raise forms.ValidationError(f"The prompt is {intcomma(len(prompt))} characters; the limit is {limit}.")
        return prompt

    def clean_top_p(self) -> float:
        top_p = self.cleaned_data["top_p"]
        if top_p is not None and top_p <= 0:
            raise forms.ValidationError("top_p must be above 0 and at most 1.")
        return top_p

    def params(self) -> JobParams:
        data = self.cleaned_data
        return JobParams(
            prompt=data["prompt"],
            max_new_tokens=data["max_new_tokens"],
            temperature=data["temperature"],
            top_k=data["top_k"],
            top_p=data["top_p"],
            num_samples=data["num_samples"],
            seed=data["seed"],
        )

    @classmethod
    def initial_from(cls, job: GenerationJob) -> dict[str, object]:
        """Run a job again: the same settings, a new form key."""
        fields = ("prompt", "max_new_tokens", "temperature", "top_k", "top_p", "num_samples", "seed")
        return {"checkpoint": job.checkpoint.slug, **{name: getattr(job, name) for name in fields}}


class ProvenanceCheckForm(forms.Form):
    """A text pasted to learn whether it was generated here."""

    text = forms.CharField(
        label="Text to check",
        widget=forms.Textarea(attrs={"rows": 10, "spellcheck": "false"}),
        # No max_length: a browser would cut a long paste short without a word; the check says so instead.
        strip=False,
        help_text=f"Paste a passage, at most {MAX_TEXT_CHARS:,} characters. It is not stored: only its SHA-256.",
        error_messages={
            "required": "Paste a text to check: it is empty.",
        },
    )

    def clean_text(self) -> str:
        text: str = self.cleaned_data["text"]
        refusal = text_refusal(text)
        if refusal:
            raise forms.ValidationError(refusal)
        return text
