"""List filters shared by pages and the API: one definition per list serves both, so the browser's
form and the API's query parameters mean the same thing.

Dates are UTC calendar days, both ends included, applied as a range on `created_at` so its index
serves them.
"""

from __future__ import annotations

from datetime import date
from typing import Any, TypeVar

import django_filters
from django import forms
from django.db.models import QuerySet

from core.time import day_end, day_start

RowsT = TypeVar("RowsT", bound=QuerySet[Any])

END_BEFORE_START = "The end date is before the start date."


def created_within(rows: RowsT, created_after: date | None = None, created_before: date | None = None) -> RowsT:
    """The rows created on the UTC days from `created_after` to `created_before`, both included."""
    if created_after is not None:
        rows = rows.filter(created_at__gte=day_start(created_after))
    if created_before is not None and created_before < date.max:
        rows = rows.filter(created_at__lt=day_end(created_before))
    return rows


class DayInput(forms.DateInput):
    input_type = "date"


class CreatedRangeForm(forms.Form):
    """A list's From and To dates (UTC days, both included); an end before the start is refused."""

    created_after = forms.DateField(required=False, label="From", widget=DayInput, help_text="UTC date, included.")
    created_before = forms.DateField(required=False, label="To", widget=DayInput, help_text="UTC date, included.")

    def clean(self) -> dict[str, Any]:
        data: dict[str, Any] = super().clean() or {}
        after, before = data.get("created_after"), data.get("created_before")
        if after and before and after > before:
            self.add_error("created_before", END_BEFORE_START)
        return data


class CreatedRangeFilterSet(django_filters.FilterSet):  # type: ignore[misc]  # django-filter ships no type hints
    """created_after / created_before: UTC calendar days, both included; an end before the start is an error."""

    created_after = django_filters.DateFilter(
        method="_created_within", label="From", widget=DayInput, help_text="Created on or after (UTC date)."
    )
    created_before = django_filters.DateFilter(
        method="_created_within", label="To", widget=DayInput, help_text="Created on or before (UTC date)."
    )

    def _created_within(self, rows: Any, name: str, value: date) -> Any:
        return created_within(rows, **{name: value})

    def get_form_class(self) -> type[forms.Form]:
        # The filters' own fields, checked as a range by CreatedRangeForm.clean; the dates come last.
        base: type[forms.Form] = super().get_form_class()
        field_order = [name for name in base.base_fields if name not in CreatedRangeForm.base_fields]
        return type(base.__name__, (base, CreatedRangeForm), {"field_order": field_order})
