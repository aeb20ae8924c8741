from django import forms

from core.validators import PURPOSE_MAX_CHARS, PURPOSE_MIN_CHARS, clean_purpose
from models_registry.models import Checkpoint


class CheckpointChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Checkpoint) -> str:
        return obj.label


class AccessRequestForm(forms.Form):
    checkpoints = CheckpointChoiceField(
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


class CheckpointStatusForm(forms.Form):
    ACTIONS = [("embargo", "Embargo"), ("restore", "Restore"), ("withdraw", "Withdraw")]

    action = forms.ChoiceField(choices=ACTIONS, error_messages={"invalid_choice": "Unknown action."})
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        required=False,
        max_length=2000,
        help_text="Partners and auditors see it. Required to withdraw.",
    )
