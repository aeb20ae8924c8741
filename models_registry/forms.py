from django import forms

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
        min_length=20,
        max_length=4000,
        strip=True,
        help_text="What you will use the checkpoints for, in 20 to 4,000 characters. Legal at the lab reads this "
        "and it becomes the purpose in your agreement.",
        error_messages={
            "required": "Describe the research purpose in at least 20 characters.",
            "min_length": "Describe the research purpose in at least 20 characters (it has %(show_value)d).",
            "max_length": "Keep the purpose to 4,000 characters (it has %(show_value)d).",
        },
    )


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
