"""Crawl ids and dates: which crawl a scheduled or backfilled run builds.

Common Crawl names a crawl after the ISO week it was taken in
(``CC-MAIN-2024-33``) and lists its WAT files in
``crawl-data/{crawl_id}/wat.paths.gz``. A run for a logical date builds the
newest crawl of the source taken in or before that date's week, so a weekly
schedule picks up each crawl as it appears (a week without a new crawl finds
no new WAT files and publishes nothing), and a backfill over past dates builds
past crawls.
"""

from __future__ import annotations

import datetime
import re

from ..core import storage

_CRAWL_ID = re.compile(r"^(?P<prefix>[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z][A-Za-z0-9]*)*)-(?P<year>\d{4})-(?P<week>\d{2})$")


class CrawlNotFound(LookupError):
    """No crawl of the source matches; the message says where it looked."""


def crawl_week(crawl_id: str) -> datetime.date | None:
    """Monday of the ISO week a crawl id names, or None for ids without one."""
    m = _CRAWL_ID.match(crawl_id)
    if not m:
        return None
    try:
        return datetime.date.fromisocalendar(int(m["year"]), int(m["week"]), 1)
    except ValueError:
        return None


def crawl_id_for_week(prefix: str, day: datetime.date) -> str:
    year, week, _ = day.isocalendar()
    return f"{prefix}-{year}-{week:02d}"


def listing(source: str, crawl_id: str) -> str:
    return storage.join(source, "crawl-data", crawl_id, "wat.paths.gz")


def list_crawls(source: str) -> list[str]:
    """Crawl ids under ``{source}/crawl-data/`` that name a week, oldest first."""
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in storage.ls(storage.join(source, "crawl-data"), "*")]
    dated = [(crawl_week(n), n) for n in names]
    return [n for week, n in sorted((w, n) for w, n in dated if w is not None)]


def crawl_for_date(source: str, day: datetime.date | datetime.datetime) -> str:
    """The newest crawl of `source` taken in or before the week of `day`."""
    if isinstance(day, datetime.datetime):
        day = day.date()
    year, week, _ = day.isocalendar()
    monday = datetime.date.fromisocalendar(year, week, 1)
    candidates = [c for c in list_crawls(source) if crawl_week(c) <= monday]
    if not candidates:
        raise CrawlNotFound(f"no crawl taken in or before week {year}-{week:02d} under "
                            f"{storage.join(source, 'crawl-data')}")
    return candidates[-1]
