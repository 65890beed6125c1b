"""WAT parsing: image links with alt text, as cc2dataset extracts them.

Plain functions, so the rules are unit-tested without Spark; the Spark job in
``spark_jobs/extract_urls.py`` maps `parse_wat_file` over WAT paths.

A Common Crawl WAT file is a sequence of gzip members, one WARC record each.
fastwarc reading the gzip stream itself stops with an error at the first
broken member, so we split the members ourselves (zlib, in C: a broken one is
counted and skipped, the rest of the file still parsed) and hand batches of
decompressed records to fastwarc. Measured here this is also faster than
fastwarc's own decompression of an in-memory file.

Common Crawl's WAT files describe billions of pages, so every oddity occurs:
records whose JSON holds lone surrogate escapes or nests thousands deep,
members that decompress to bytes that are not WARC (fastwarc raises at them
and would lose the rest of its batch: such a batch is parsed again member by
member). A record or link that cannot be used is a counted skip by reason; a
record this parser did not foresee is skipped as ``unparseable_record`` and
logged with its file. What the file as a whole gave (read to its end, cut
short, empty, not WARC at all) is `file_status`, which the crawl's manifest
records (source_files.py).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator
from urllib.parse import urljoin

import orjson
import pyarrow as pa
from fastwarc.warc import ArchiveIterator, WarcRecordType

from ..core import storage
from ..core.schema import URLS_SCHEMA, compute_uids
from .url_resolve import PageResolver

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b\x08"
_HOST = re.compile(r"https?://([^/?#\s]+)")
# a member's input is fed in growing chunks: what follows its end is copied into unused_data, so a
# large first chunk costs a copy per record (WAT records are a few kB gzipped)
_FIRST_CHUNK = 1 << 12
_MAX_CHUNK = 1 << 20
_BATCH_BYTES = 8 << 20
# a WAT record is a few kB to a few MB; one member inflating beyond this is skipped
_MAX_RECORD_BYTES = 256 << 20


@dataclass(frozen=True)
class LinkRules:
    max_url_length: int = 2048
    max_text_length: int = 4096


def resolve_url(url: str, page: PageResolver) -> str | None:
    """Absolute http(s) URL for `url` found on a page, or None.

    As cc2dataset does, absolute http(s) URLs are kept verbatim and only
    relative ones are resolved, as urljoin resolves them (url_resolve.py).
    A URL without a host, or with an unbalanced IPv6 bracket, is None.
    """
    url = url.strip()
    if not url.startswith(("http://", "https://")):
        if not url:
            return None
        try:
            url = page.resolve(url)
        except ValueError:
            return None
        if not url.startswith(("http://", "https://")):
            return None
    host_start = url[7:8] if url[4] == ":" else url[8:9]
    if not host_start or host_start in "/?#" or host_start.isspace():
        return None
    if ("[" in url or "]" in url) and not _balanced_host(url):
        return None
    return url


def _balanced_host(url: str) -> bool:
    host = _HOST.match(url).group(1)
    return ("[" in host) == ("]" in host)


def _loads(payload: bytes):
    """orjson (about twice json's speed here), with json behind it for what orjson is stricter about
    (NaN, lone surrogate escapes), so that a record parses exactly when json would parse it."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return json.loads(payload)


class PairColumns:
    """The pairs of one WAT file as column lists: Arrow takes them as they are, a pair costs three list
    appends instead of a dict, and the uids are computed in one batch at the end."""

    __slots__ = ("wat_path", "url", "text", "page_url")

    def __init__(self, wat_path: str):
        self.wat_path = wat_path
        self.url: list[str] = []
        self.text: list[str] = []
        self.page_url: list[str] = []

    def __len__(self) -> int:
        return len(self.url)

    def truncate(self, n: int) -> None:
        """Drop what a record appended after the first `n` pairs (a record that failed half-way)."""
        del self.url[n:], self.text[n:], self.page_url[n:]

    def to_table(self, counters: Counter | None = None) -> pa.Table:
        """The pairs as a table; pairs that are not valid Unicode (a lone surrogate escape, which JSON allows
        and UTF-8 cannot hold) are dropped, counted ``skipped:invalid_unicode``. Checked only when the batch
        fails to encode: the common file pays nothing."""
        try:
            return self._table()
        except UnicodeEncodeError:
            keep = [i for i, row in enumerate(zip(self.url, self.text, self.page_url)) if _encodable(row)]
            dropped = len(self) - len(keep)
            if counters is not None:
                counters["skipped:invalid_unicode"] += dropped
                counters["pairs"] -= dropped
            self.url, self.text, self.page_url = ([column[i] for i in keep]
                                                  for column in (self.url, self.text, self.page_url))
            return self._table()

    def _table(self) -> pa.Table:
        return pa.table([compute_uids(self.text, self.url), self.url, self.text, self.page_url,
                         pa.repeat(pa.scalar(self.wat_path), len(self.url))], schema=URLS_SCHEMA)


def _encodable(strings) -> bool:
    try:
        for text in strings:
            text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def extract_pairs(payload: bytes, record_uri: Callable[[], str], rules: LinkRules, counters: Counter,
                  out: PairColumns) -> int:
    """Append the image-text pairs of one WAT metadata record's JSON payload to `out`; returns how many.

    The page's URL is the envelope's WARC-Target-URI (the response record's, which Common Crawl's WAT
    record repeats in its own header); `record_uri` gives the record header's, asked only when the
    envelope has none (reading a fastwarc header costs more than the JSON lookup).
    """
    try:
        envelope = _loads(payload)["Envelope"]
    except (ValueError, KeyError, TypeError):
        counters["skipped:bad_json"] += 1
        return 0
    except RecursionError:  # json's parser recurses per level; orjson stops at 1024 levels
        counters["skipped:json_too_deep"] += 1
        return 0
    try:
        html = envelope["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]
    except (KeyError, TypeError):
        counters["records_without_html"] += 1
        return 0
    if not isinstance(html, dict):
        counters["records_without_html"] += 1
        return 0
    warc_header = envelope.get("WARC-Header-Metadata")
    page_url = warc_header.get("WARC-Target-URI") if isinstance(warc_header, dict) else None
    if not isinstance(page_url, str) or not page_url:
        page_url = record_uri()
    head = html.get("Head") if isinstance(html.get("Head"), dict) else {}
    base = page_url
    if isinstance(head.get("Base"), str) and head["Base"].strip():
        try:
            base = urljoin(page_url, head["Base"].strip())
        except ValueError:  # an unbalanced IPv6 bracket: links resolve against the page
            pass
    links = html.get("Links")
    if not isinstance(links, list):
        counters["records_with_html"] += 1
        return 0
    page = PageResolver(base)
    # per-link work is most of a WAT file's parse: counts in locals, added to the counters once
    image_links = no_alt = too_long_text = not_http = too_long_url = pairs = 0
    max_text, max_url = rules.max_text_length, rules.max_url_length
    add_url, add_text = out.url.append, out.text.append
    for link in links:
        if not isinstance(link, dict) or link.get("path") != "IMG@/src":
            continue
        image_links += 1
        alt = link.get("alt")
        text = alt.strip() if isinstance(alt, str) else ""
        if not text:
            no_alt += 1
            continue
        if len(text) > max_text:
            too_long_text += 1
            continue
        raw = link.get("url")
        url = resolve_url(raw, page) if isinstance(raw, str) else None
        if url is None:
            not_http += 1
            continue
        if len(url) > max_url:
            too_long_url += 1
            continue
        add_url(url)
        add_text(text)
        pairs += 1
    out.page_url.extend([page_url] * pairs)
    for key, n in (("records_with_html", 1), ("image_links", image_links), ("skipped:no_alt", no_alt), ("skipped:text_too_long", too_long_text),
                   ("skipped:not_http_url", not_http), ("skipped:url_too_long", too_long_url), ("pairs", pairs)):
        if n:
            counters[key] += n
    return pairs


class _RecordTooLarge(zlib.error):
    pass


def _split_members(data: memoryview, counters: Counter) -> Iterator[bytes]:
    """Decompress gzip members one by one; skip a broken one and resync at the next header.

    A member cut short by the end of the file sets ``truncated_at_end`` (the file is incomplete: the crawl's
    manifest keeps it pending); one that inflates beyond `_MAX_RECORD_BYTES` is skipped (a gzip bomb would
    otherwise take the executor's memory)."""
    pos, end = 0, len(data)
    while pos < end:
        dec = zlib.decompressobj(zlib.MAX_WBITS | 16)
        out, fed, step, produced = [], pos, _FIRST_CHUNK, 0
        try:
            while not dec.eof and fed < end:
                chunk = data[fed : fed + step]
                fed += len(chunk)
                step = min(step * 2, _MAX_CHUNK)
                piece = dec.decompress(chunk, _MAX_RECORD_BYTES + 1 - produced)
                produced += len(piece)
                if dec.unconsumed_tail or produced > _MAX_RECORD_BYTES:
                    raise _RecordTooLarge(f"member inflates beyond {_MAX_RECORD_BYTES} bytes")
                out.append(piece)
            if not dec.eof:
                counters["truncated_at_end"] = 1
                raise zlib.error("member truncated at end of file")
        except zlib.error as exc:
            counters["skipped:record_too_large" if isinstance(exc, _RecordTooLarge)
                     else "skipped:broken_gzip_member"] += 1
            log.debug("broken gzip member at byte %d: %s", pos, exc)
            nxt = bytes(data[pos + 1 :]).find(GZIP_MAGIC) if pos + 1 < end else -1
            if nxt < 0:
                return
            pos = pos + 1 + nxt
            continue
        pos = fed - len(dec.unused_data)
        yield b"".join(out)


def _warc_records(raw: bytes) -> Iterator[tuple[Callable[[], str], bytes]]:
    """(the header's target URI, when asked; payload) of the metadata records in uncompressed WARC bytes;
    fastwarc raises OSError at bytes that are not a WARC record."""
    for record in ArchiveIterator(io.BytesIO(raw), record_types=WarcRecordType.metadata, parse_http=False):
        yield functools.partial(record.headers.get, "WARC-Target-URI", ""), record.reader.read()


def _records(members: list[bytes], counters: Counter) -> Iterator[tuple[Callable[[], str], bytes]]:
    """The records of a batch of members, parsed together (fastwarc's fast path); when one member is not
    WARC, the batch again member by member from the first record not yet given, that member skipped."""
    given = 0
    try:
        for item in _warc_records(b"".join(members)):
            given += 1
            counters["records"] += 1
            yield item
        return
    except OSError:
        pass
    seen = 0
    for member in members:
        try:
            records = list(_warc_records(member))
        except OSError as exc:
            counters["skipped:not_warc_record"] += 1
            log.debug("a gzip member that is not a WARC record: %s", exc)
            continue
        for item in records:
            seen += 1
            if seen > given:
                counters["records"] += 1
                yield item


def iter_wat_payloads(data: bytes, counters: Counter) -> Iterator[tuple[Callable[[], str], bytes]]:
    """Metadata records of a WAT file's bytes, gzipped per record or plain.

    Raises WatReadError (status ``not_warc``) for bytes that are neither: an HTML error page saved in the
    file's place, random bytes."""
    if not data.startswith(GZIP_MAGIC):
        if not data.lstrip()[:5] == b"WARC/":
            raise WatReadError("not_warc", f"neither gzip nor WARC (it starts with {bytes(data[:24])!r})")
        yield from _records([data], counters)
        return
    batch, size = [], 0
    for member in _split_members(memoryview(data), counters):
        batch.append(member)
        size += len(member)
        if size >= _BATCH_BYTES:
            yield from _records(batch, counters)
            batch, size = [], 0
    if batch:
        yield from _records(batch, counters)


class WatReadError(storage.StorageError):
    """A WAT file gave nothing usable: `status` says why (``unreadable``: missing or a failed read; ``empty``;
    ``not_warc``). It stays pending in the crawl's manifest, and a later run reads it again."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


# What a file that was read gave, for the crawl's manifest (source_files.py). Only "processed" is done.
def file_status(counters: Counter) -> str:
    if counters.get("truncated_at_end"):
        return "truncated"
    if not counters.get("records") and (counters.get("skipped:broken_gzip_member")
                                        or counters.get("skipped:not_warc_record")):
        return "corrupt"
    return "processed"


def parse_wat_file(wat_path: str, rules: LinkRules = LinkRules()) -> tuple[pa.Table, Counter]:
    """All pairs of one WAT file (local path or URL), as a table of URLS_SCHEMA, and the counters of
    what was read and skipped.

    Raises WatReadError when the file gives nothing usable (it cannot be read, is empty, or is not WARC);
    damage inside a readable file (a broken gzip member, bad JSON, a record nobody foresaw) is counted and
    skipped, and `file_status` tells from the counters whether the file was read to its end.
    """
    counters: Counter = Counter()
    try:
        data = storage.read_bytes(wat_path)
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own kinds (botocore, aiohttp...)
        raise WatReadError("unreadable", f"cannot read WAT file {wat_path}: {type(exc).__name__}: {exc}") from exc
    if not data:
        raise WatReadError("empty", f"WAT file {wat_path} is empty (0 bytes)")
    out = PairColumns(wat_path)
    try:
        for record_uri, payload in iter_wat_payloads(data, counters):
            before = len(out)
            try:
                extract_pairs(payload, record_uri, rules, counters, out)
            except Exception as exc:  # noqa: BLE001 - one record never stops a file: skipped, counted, named
                out.truncate(before)
                counters["skipped:unparseable_record"] += 1
                log.warning("%s: record %d skipped: %s: %s", wat_path, counters["records"], type(exc).__name__, exc)
    except WatReadError as exc:
        raise WatReadError(exc.status, f"WAT file {wat_path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the reader itself failed: the file as a whole is unusable now
        raise WatReadError("corrupt", f"cannot parse WAT file {wat_path} after {counters['records']} records: "
                                      f"{type(exc).__name__}: {exc}") from exc
    return out.to_table(counters), counters


def read_wat_listing(listing: str, prefix: str = "") -> list[str]:
    """WAT paths from a crawl's ``wat.paths.gz`` listing, joined onto `prefix`."""
    with storage.open_file(listing, "rb", compression="infer") as f:
        lines = f.read().decode().splitlines()
    return [storage.join(prefix, line.strip()) if prefix else line.strip() for line in lines if line.strip()]
