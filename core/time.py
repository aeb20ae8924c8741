"""UTC days: quotas, filters and exports all count whole days in UTC."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta


def day_start(day: date | datetime) -> datetime:
    """00:00 UTC of `day` (a date, or the UTC date of a moment)."""
    if isinstance(day, datetime):
        day = day.astimezone(UTC).date()
    return datetime.combine(day, time.min, tzinfo=UTC)


def next_midnight(moment: datetime) -> datetime:
    """The next 00:00 UTC after `moment`: when a daily quota resets."""
    return day_start(moment) + timedelta(days=1)


def day_end(day: date) -> datetime:
    """00:00 UTC of the day after `day`: the exclusive end of a range that includes `day`."""
    return day_start(day) + timedelta(days=1)


def utc_iso(moment: datetime) -> str:
    """2026-11-28T00:00:00Z: ISO 8601 in UTC, as every time in the API is written."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
