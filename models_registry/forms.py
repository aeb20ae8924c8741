from django import forms


class CheckpointStatusForm(forms.Form):
    ACTIONS = [("embargo", "Embargo"), ("restore", "Restore"), ("withdraw", "Withdraw")]

    action = forms.ChoiceField(choices=ACTIONS, error_messages={"invalid_choice": "Unknown action."})
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        required=False,
        max_length=2000,
        help_text="Partners and auditors see it. Required to withdraw.",
    )
