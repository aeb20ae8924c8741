from django import forms

from accounts.models import Organization, Role


class OrganizationForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="Short name shown across ModelPact, e.g. “Partner A”.")
    legal_name = forms.CharField(max_length=300, help_text="As it appears in agreements.")
    jurisdiction = forms.CharField(max_length=200, required=False, help_text="e.g. England and Wales")
    address = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    contact_email = forms.EmailField(required=False)


class OrganizationEditForm(OrganizationForm):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        del self.fields["name"]


class InvitationForm(forms.Form):
    email = forms.EmailField(error_messages={"invalid": "Enter a valid email address, like name@example.org."})
    role = forms.ChoiceField(choices=())

    def __init__(self, *args: object, organization: Organization, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = [(r.value, r.label) for r in Role.for_kind(organization.kind)]
        self.fields["role"].error_messages["invalid_choice"] = "Choose one of the roles listed."


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=())

    def __init__(self, *args: object, organization: Organization, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = [(r.value, r.label) for r in Role.for_kind(organization.kind)]
        self.fields["role"].error_messages["invalid_choice"] = "Choose one of the roles listed."


class AcceptInvitationForm(forms.Form):
    full_name = forms.CharField(max_length=200, label="Full name")
    password1 = forms.CharField(label="Password", widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    password2 = forms.CharField(
        label="Password (again)", widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )

    def clean(self) -> dict:
        data = super().clean()
        if data.get("password1") and data.get("password2") and data["password1"] != data["password2"]:
            self.add_error("password2", "The two passwords differ.")
        return data
