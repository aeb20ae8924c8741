"""The release decision form: it parses what the browser sends; release_decide decides what is allowed.

The rationale and the partners are optional here so that the service's own message (what a rationale
needs, who is not in good standing and why) is the one shown next to the field.
"""

from __future__ import annotations

from django import forms

from accounts.models import Organization
from research.models import ReleaseDecision

DECISION_HELP: dict[str, str] = {
    ReleaseDecision.Decision.KEEP_EMBARGOED: "Nobody may use it; an available checkpoint is embargoed now.",
    ReleaseDecision.Decision.RELEASE_TO_PARTNERS: (
        "Lifts an embargo and drafts the staged-release amendment for each partner you tick; legal sends it."
    ),
    ReleaseDecision.Decision.RELEASE_TO_ALL_PARTNERS: (
        "The same, for every partner in good standing with an active agreement."
    ),
    ReleaseDecision.Decision.PUBLIC_RELEASE: (
        "Lifts an embargo, marks it public, and every active agreement grants it at once."
    ),
}


class ReleaseDecisionForm(forms.Form):
    decision = forms.ChoiceField(
        choices=ReleaseDecision.Decision.choices,
        widget=forms.RadioSelect,
        error_messages={"required": "Choose a decision.", "invalid_choice": "Choose one of the four decisions."},
    )
    partners = forms.ModelMultipleChoiceField(
        # Every partner, so that one not in good standing is refused by the service, saying why.
        queryset=Organization.objects.filter(kind=Organization.Kind.PARTNER).order_by("name"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Partners to release to",
    )
    rationale = forms.CharField(
        required=False,
        strip=False,
        max_length=5000,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Why, on this evidence: legal, auditors and the sealed record read it.",
    )
    # The decision in force when the page was shown: a decision recorded since makes this one a conflict.
    after = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)
