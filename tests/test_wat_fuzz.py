"""Fuzzing the WAT reader: mutated files never raise, and every record is parsed or skipped by reason.

Common Crawl's WAT files describe billions of pages: lone surrogates, JSON nested thousands deep, huge
strings, wrong types, bytes that are not UTF-8 and files cut short all occur. hypothesis mutates a small
WAT file (cut at any offset, bytes flipped, records replaced by odd JSON) with a fixed budget, so CI
stays fast; each mutated file goes through `parse_wat_file`, as the extraction's tasks call it.
"""

import json
from collections import Counter

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datacomp_ops.core.schema import compute_uid
from datacomp_ops.crawl.source_files import PENDING
from datacomp_ops.crawl.wat import WatReadError, file_status, parse_wat_file
from datacomp_ops.synthetic.crawl import _envelope, _record

BUDGET = settings(max_examples=150, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# what became of each record, and of each image link: the counters add up to what was read
RECORD_OUTCOMES = ("records_with_html", "records_without_html", "skipped:bad_json", "skipped:json_too_deep",
                   "skipped:unparseable_record")
LINK_OUTCOMES = ("pairs", "skipped:no_alt", "skipped:text_too_long", "skipped:not_http_url", "skipped:url_too_long",
                 "skipped:invalid_unicode")


def _good_payload(i: int) -> bytes:
    links = [{"path": "IMG@/src", "url": f"/img/{i}-{k}.jpg", "alt": f"picture {i} {k}"} for k in range(3)]
    return json.dumps(_envelope(f"http://site{i}.example/page.html", links)).encode()


def _wat(payloads: list[bytes]) -> bytes:
    return b"".join(_record(f"http://site{i}.example/page.html", p) for i, p in enumerate(payloads))


_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
_json_values = st.recursive(_json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def _with_links(links) -> bytes:
    return json.dumps(_envelope("http://odd.example/p.html", links)).encode()


# one odd record's payload, as JSON text or raw bytes
_odd_payloads = st.one_of(
    # a lone surrogate escape where the caption, the URL or the page URL goes (json allows it, UTF-8 cannot hold it)
    st.sampled_from([
        _with_links([{"path": "IMG@/src", "url": "/a.jpg", "alt": "bad \\ud800 caption"}]).replace(b"\\\\ud800", b"\\ud800"),
        _with_links([{"path": "IMG@/src", "url": "/\\udfff.jpg", "alt": "ok"}]).replace(b"\\\\udfff", b"\\udfff"),
        _with_links([{"path": "IMG@/src", "url": "/a.jpg", "alt": "ok"}]).replace(b"http://odd.example/p.html",
                                                                                 b"http://odd.example/\\ud834"),
    ]),
    # nesting deeper than any parser's recursion
    st.integers(min_value=900, max_value=20000).map(lambda d: b'{"Envelope": ' + b"[" * d + b"]" * d + b"}"),
    # huge strings
    st.sampled_from([_with_links([{"path": "IMG@/src", "url": "/a.jpg", "alt": "x" * 200_000}]),
                     _with_links([{"path": "IMG@/src", "url": "/" + "u" * 100_000, "alt": "long url"}])]),
    # wrong types anywhere in the envelope
    _json_values.map(lambda v: json.dumps({"Envelope": v}).encode()),
    _json_values.map(lambda v: _with_links(v if isinstance(v, list) else [v])),
    _json_values.map(lambda v: _with_links([{"path": "IMG@/src", "url": v, "alt": v}])),
    _json_values.map(lambda v: json.dumps({"Envelope": {"Payload-Metadata": {"HTTP-Response-Metadata": {
        "HTML-Metadata": {"Head": {"Base": v}, "Links": [{"path": "IMG@/src", "url": "x.jpg", "alt": "a"}]}}},
        "WARC-Header-Metadata": {"WARC-Target-URI": v}}}).encode()),
    # missing fields, not JSON, not UTF-8
    st.sampled_from([b"{}", b'{"Envelope": {}}', b"", b"null", b"\xff\xfe\x00garbage", b'{"Envelope": "\xc3\x28"}',
                     b'{"Envelope": {"Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": '
                     b'{"Head": {"Base": "http://[bad"}, "Links": [{"path": "IMG@/src", "url": "x.jpg", "alt": "a"}]}}}}}']),
    st.binary(max_size=200),
)


def _check_accounts(table: pa.Table, counters: Counter) -> None:
    assert counters["records"] == sum(counters[k] for k in RECORD_OUTCOMES), counters
    assert counters["image_links"] == sum(counters[k] for k in LINK_OUTCOMES), counters
    assert table.num_rows == counters["pairs"]
    for row in table.to_pylist():
        assert row["uid"] == compute_uid(row["text"], row["url"])
        for text in (row["url"], row["text"], row["page_url"]):
            text.encode("utf-8")  # valid Unicode, so the parquet part can hold it


def _parse(tmp_path, data: bytes):
    path = tmp_path / "fuzz.warc.wat.gz"
    path.write_bytes(data)
    try:
        table, counters = parse_wat_file(str(path))
    except WatReadError as exc:  # the file as a whole gave nothing: a pending status with its reason
        assert exc.status in PENDING and str(path) in str(exc)
        return None, None
    _check_accounts(table, counters)
    return table, counters


@BUDGET
@given(odd=st.lists(_odd_payloads, min_size=1, max_size=3), where=st.integers(0, 4))
def test_odd_records_are_skipped_by_reason_and_the_rest_is_parsed(tmp_path, odd, where):
    good = [_good_payload(i) for i in range(4)]
    payloads = good[:where] + odd + good[where:]
    table, counters = _parse(tmp_path, _wat(payloads))
    assert counters["records"] == len(payloads) and file_status(counters) == "processed"
    # the good records' pairs all arrive, whatever their neighbours held
    texts = set(table["text"].to_pylist())
    assert {f"picture {i} {k}" for i in range(4) for k in range(3)} <= texts


@BUDGET
@given(cut=st.integers(min_value=0), flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)),
                                                     max_size=6))
def test_cut_and_flipped_files_never_raise_and_account_for_every_record(tmp_path, cut, flips):
    data = bytearray(_wat([_good_payload(i) for i in range(5)]))
    for position, value in flips:
        data[position % len(data)] = value
    data = bytes(data[: cut % (len(data) + 1)])
    table, counters = _parse(tmp_path, data)
    if counters is not None:
        assert counters["records"] <= 5 + len(flips)
        assert file_status(counters) in ("processed", "truncated", "corrupt")


@BUDGET
@given(odd=_odd_payloads, cut=st.integers(min_value=1))
def test_odd_records_in_files_cut_short(tmp_path, odd, cut):
    data = _wat([_good_payload(0), odd, _good_payload(1)])
    _parse(tmp_path, data[: cut % len(data)])


def test_whole_files_of_garbage_are_pending_with_a_reason(tmp_path):
    for data, status in ((b"", "empty"), (b"<html><body>502 Bad Gateway</body></html>", "not_warc"),
                         (bytes(range(256)) * 20, "not_warc")):
        path = tmp_path / f"{status}.warc.wat.gz"
        path.write_bytes(data)
        try:
            parse_wat_file(str(path))
        except WatReadError as exc:
            assert exc.status == status and str(path) in str(exc)
        else:
            raise AssertionError(f"{status}: no error")
