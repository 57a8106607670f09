"""The dataset's calendar: its first and last day, and a day's bounds in UTC."""

from datetime import date, datetime, timedelta, timezone

DATASET_FIRST_DAY = date(2019, 6, 25)
DATASET_LAST_DAY = date(2019, 10, 10)


def day_bounds(day: str) -> tuple[datetime, datetime]:
    """The UTC start of `day` (YYYY-MM-DD) and of the day after it."""
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


def previous_day(day: str) -> str:
    return (datetime.fromisoformat(day) - timedelta(days=1)).date().isoformat()
