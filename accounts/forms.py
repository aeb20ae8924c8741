from typing import Any, cast

from django import forms

from accounts import services
from accounts.models import Organization, Role


class OrganizationForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="Short name shown across ModelPact, e.g. “Partner A”.")
    legal_name = forms.CharField(max_length=300, help_text="As it appears in agreements.")
    jurisdiction = forms.CharField(max_length=200, required=False, help_text="e.g. England and Wales")
    address = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    contact_email = forms.EmailField(required=False)


class OrganizationEditForm(OrganizationForm):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.fields["name"]


class InvitationForm(forms.Form):
    email = forms.EmailField(error_messages={"invalid": "Enter a valid email address, like name@example.org."})
    role = forms.ChoiceField(choices=())

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        role = cast(forms.ChoiceField, self.fields["role"])
        role.choices = [(r.value, r.label) for r in Role.for_kind(organization.kind)]
        role.error_messages["invalid_choice"] = "Choose one of the roles listed."


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=())

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        role = cast(forms.ChoiceField, self.fields["role"])
        role.choices = [(r.value, r.label) for r in Role.for_kind(organization.kind)]
        role.error_messages["invalid_choice"] = "Choose one of the roles listed."


class AcceptInvitationForm(forms.Form):
    full_name = forms.CharField(max_length=200, label="Full name")
    password1 = forms.CharField(label="Password", widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    password2 = forms.CharField(
        label="Password (again)", widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )

    def clean(self) -> dict[str, Any]:
        data = cast(dict[str, Any], super().clean())  # Form.clean returns cleaned_data
        if data.get("password1") and data.get("password2") and data["password1"] != data["password2"]:
            self.add_error("password2", "The two passwords differ.")
        return data


class TokenCreateForm(forms.Form):
    expiry_days = forms.TypedChoiceField(
        label="Expires after",
        coerce=int,
        choices=[(7, "7 days"), (30, "30 days"), (90, "90 days"), (365, "1 year")],
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        default = services.api_token_default_expiry_days()
        expiry_days = cast(forms.TypedChoiceField, self.fields["expiry_days"])
        choices = dict(cast(list[tuple[int, str]], expiry_days.choices))  # the pairs given above
        choices.setdefault(default, f"{default} days")
        expiry_days.choices = sorted(choices.items())
        expiry_days.initial = default


class NotificationSettingsForm(forms.Form):
    """Tick the kinds of notice to receive; essential ones are shown, always on, and not part of the form."""

    enabled = forms.MultipleChoiceField(
        label="Tell me when",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        error_messages={
            "invalid_choice": "%(value)s is not a notification you can switch on or off; choose from the list."
        },
    )

    def __init__(self, *args: Any, optional: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        enabled = cast(forms.MultipleChoiceField, self.fields["enabled"])
        enabled.choices = optional
