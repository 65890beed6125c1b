import gzip
import json
import re
from collections import Counter

import pytest

from datacomp_ops.core.schema import compute_uid
from datacomp_ops.crawl.url_resolve import PageResolver
from datacomp_ops.crawl.wat import (
    LinkRules,
    PairColumns,
    WatReadError,
    extract_pairs,
    file_status,
    iter_wat_payloads,
    parse_wat_file,
    resolve_url,
)
from datacomp_ops.synthetic.crawl import _envelope, _record

PAGE = "http://site.example/a/b/page.html"


def _pairs(links, base=None, rules=LinkRules()):
    counters, out = Counter(), PairColumns("f.wat.gz")
    n = extract_pairs(json.dumps(_envelope(PAGE, links, base)).encode(), lambda: PAGE, rules, counters, out)
    rows = out.to_table().to_pylist()
    assert n == len(rows) == counters["pairs"]
    return rows, counters


def test_keeps_img_links_with_alt_and_resolves_relative_urls():
    rows, counters = _pairs([
        {"path": "IMG@/src", "url": "/img/x.jpg", "alt": " a cat "},
        {"path": "IMG@/src", "url": "../y.png", "alt": "a dog"},
        {"path": "IMG@/src", "url": "https://cdn.example/z.jpg", "alt": "a bird"},
        {"path": "A@/href", "url": "/other.html", "text": "link"},
    ])
    assert [(r["url"], r["text"]) for r in rows] == [
        ("http://site.example/img/x.jpg", "a cat"),
        ("http://site.example/a/y.png", "a dog"),
        ("https://cdn.example/z.jpg", "a bird"),
    ]
    assert rows[0]["uid"] == compute_uid("a cat", "http://site.example/img/x.jpg")
    assert rows[0]["page_url"] == PAGE and rows[0]["wat_path"] == "f.wat.gz"
    assert counters["pairs"] == 3 and counters["image_links"] == 3


def test_html_base_is_honoured():
    rows, _ = _pairs([{"path": "IMG@/src", "url": "x.jpg", "alt": "cat"}], base="http://cdn.example/static/")
    assert rows[0]["url"] == "http://cdn.example/static/x.jpg"


def test_drops_are_counted_by_reason():
    rows, counters = _pairs([
        {"path": "IMG@/src", "url": "/no-alt.jpg"},
        {"path": "IMG@/src", "url": "/blank.jpg", "alt": "   "},
        {"path": "IMG@/src", "url": "data:image/gif;base64,AAAA", "alt": "pixel"},
        {"path": "IMG@/src", "url": "javascript:void(0)", "alt": "js"},
        {"path": "IMG@/src", "url": "ftp://host/x.jpg", "alt": "ftp"},
        {"path": "IMG@/src", "url": "/" + "x" * 3000 + ".jpg", "alt": "long"},
        {"path": "IMG@/src", "url": "http://[bad", "alt": "bad url"},
        {"path": "IMG@/src", "url": "/essay.jpg", "alt": "word " * 1000},  # 5,000 characters of caption
    ])
    assert rows == []
    assert counters["skipped:text_too_long"] == 1
    assert counters["skipped:no_alt"] == 2
    assert counters["skipped:not_http_url"] == 4
    assert counters["skipped:url_too_long"] == 1


def test_malformed_records_are_counted_not_fatal():
    counters, out = Counter(), PairColumns("f")
    for payload in (b"{not json", b'{"Envelope": {"Payload-Metadata": {}}}', b'["a list"]'):
        assert extract_pairs(payload, lambda: PAGE, LinkRules(), counters, out) == 0
    assert len(out) == 0
    assert counters["skipped:bad_json"] == 2 and counters["records_without_html"] == 1


def test_resolve_url():
    assert resolve_url(" /a.jpg ", PageResolver("https://h/x/")) == "https://h/a.jpg"
    assert resolve_url("", PageResolver("https://h/")) is None
    assert resolve_url("mailto:a@b", PageResolver("https://h/")) is None
    assert resolve_url("img.jpg", PageResolver("ftp://h/a/")) is None  # only http(s) pages resolve to pairs


def test_broken_gzip_member_is_skipped_and_the_rest_parsed(tmp_path):
    good = [_record(f"http://h/{i}", _envelope(f"http://h/{i}", [{"path": "IMG@/src", "url": f"/{i}.jpg", "alt": f"img {i}"}]))
            for i in range(4)]
    broken = bytearray(good[1])
    broken[len(broken) // 2: len(broken) // 2 + 6] = b"\xff" * 6
    path = tmp_path / "x.wat.gz"
    path.write_bytes(good[0] + bytes(broken) + good[2] + good[3][:-10])  # last member cut short too
    table, counters = parse_wat_file(str(path))
    assert table["text"].to_pylist() == ["img 0", "img 2"]
    assert counters["skipped:broken_gzip_member"] == 2


def test_uncompressed_wat_and_unreadable_file(tmp_path):
    record = gzip.decompress(_record("http://h/p", _envelope("http://h/p", [{"path": "IMG@/src", "url": "/a.jpg", "alt": "a"}])))
    path = tmp_path / "plain.wat"
    path.write_bytes(record)
    counters = Counter()
    assert len(list(iter_wat_payloads(path.read_bytes(), counters))) == 1
    with pytest.raises(WatReadError, match="missing.wat.gz"):
        parse_wat_file(str(tmp_path / "missing.wat.gz"))


def test_page_url_from_the_envelope_or_else_the_record_header():
    links = [{"path": "IMG@/src", "url": "x.jpg", "alt": "cat"}]
    out = PairColumns("f")
    extract_pairs(json.dumps(_envelope("http://env.example/d/p.html", links)).encode(), lambda: "http://header.example/",
                  LinkRules(), Counter(), out)
    assert out.url == ["http://env.example/d/x.jpg"] and out.page_url == ["http://env.example/d/p.html"]
    for header in (None, [], {"WARC-Target-URI": 7}, {"WARC-Target-URI": ""}):  # none usable: the record header's
        envelope = _envelope("unused", links)
        envelope["Envelope"]["WARC-Header-Metadata"] = header
        out = PairColumns("f")
        extract_pairs(json.dumps(envelope).encode(), lambda: "http://header.example/a/", LinkRules(), Counter(), out)
        assert out.url == ["http://header.example/a/x.jpg"] and out.page_url == ["http://header.example/a/"]


def test_lone_surrogates_deep_nesting_and_non_warc_members_are_counted_skips(tmp_path):
    """What broke a whole batch before: each is a counted skip of its file, and the file's other pairs arrive."""
    ok = {"path": "IMG@/src", "url": "/ok.jpg", "alt": "fine"}
    surrogate = json.dumps(_envelope("http://h/s", [ok, {"path": "IMG@/src", "url": "/x.jpg", "alt": "PLACE"}]))
    records = [
        _record("http://h/s", surrogate.replace("PLACE", "\\ud800").encode()),  # json accepts it, UTF-8 cannot
        _record("http://h/d", b'{"Envelope": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        gzip.compress(b"<html>not a WARC record</html>"),  # a member that decompresses to something else
        _record("http://h/g", _envelope("http://h/g", [{"path": "IMG@/src", "url": "/g.jpg", "alt": "good"}])),
    ]
    path = tmp_path / "odd.warc.wat.gz"
    path.write_bytes(b"".join(records))
    table, counters = parse_wat_file(str(path))
    assert sorted(table["text"].to_pylist()) == ["fine", "good"]
    assert counters["skipped:invalid_unicode"] == 1 and counters["skipped:json_too_deep"] == 1
    assert counters["skipped:not_warc_record"] == 1 and counters["records"] == 3


def test_files_that_give_nothing_say_why(tmp_path):
    good = _record("http://h/p", _envelope("http://h/p", [{"path": "IMG@/src", "url": "/a.jpg", "alt": "a"}]))
    for name, data, status in (("empty", b"", "empty"), ("proxy", b"<html>502 Bad Gateway</html>", "not_warc"),
                               ("random", bytes(range(7, 250)) * 9, "not_warc")):
        path = tmp_path / f"{name}.warc.wat.gz"
        path.write_bytes(data)
        with pytest.raises(WatReadError, match=re.escape(str(path))) as info:
            parse_wat_file(str(path))
        assert info.value.status == status
    cut = tmp_path / "cut.warc.wat.gz"
    cut.write_bytes(good + good[: len(good) // 2])
    table, counters = parse_wat_file(str(cut))
    assert table.num_rows == 1 and file_status(counters) == "truncated"
    whole = tmp_path / "whole.warc.wat.gz"
    whole.write_bytes(good + good)
    assert file_status(parse_wat_file(str(whole))[1]) == "processed"
