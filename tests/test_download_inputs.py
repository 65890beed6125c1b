"""Inputs img2dataset mishandled: deep and rotated images (image_decode), URLs a browser encodes (url_fetch).

The truths are independent of the code under test: pixel means computed from the arrays the
test encodes, PIL's own decoder and ``ImageOps.exif_transpose``, the URL standard's and the
IDNA RFCs' published examples, and the raw request lines a loopback server received.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from datacomp_ops.core import ledger
from datacomp_ops.core.config import load_config
from datacomp_ops.core.layout import PoolLayout
from datacomp_ops.core.schema import compute_uid
from datacomp_ops.download.image_decode import UnsupportedImage, decode
from datacomp_ops.download.partition import Partition, classify_failure, run_download
from datacomp_ops.download.url_fetch import InvalidURL, request_url

# -- images ---------------------------------------------------------------------------------------------------


def _gradient16(height: int = 64, width: int = 256) -> np.ndarray:
    """0 to 65535 left to right: mean 32767.5, 127.5 in 8 bits."""
    return np.tile(np.linspace(0, 65535, width).round().astype(np.uint16), (height, 1))


def _rgb16() -> np.ndarray:
    g = _gradient16()
    return np.dstack([g, g[:, ::-1], np.full_like(g, 20000)])  # BGR, as cv2 writes it


def _encode(ext: str, img: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def _pil_bytes(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def _half_alpha_on_white(bgr16: np.ndarray) -> float:
    """The mean img2dataset's matting on white gives a 16-bit image with alpha one half (32768 of 65535)."""
    a = 32768 / 65535
    return float((a * bgr16 / 257 + (1 - a) * 255).mean())


DEEP_IMAGES = {  # name: (bytes, mean of the 8-bit image a viewer shows)
    "png gray 16-bit": (_encode(".png", _gradient16()), 127.5),
    "png rgb 16-bit": (_encode(".png", _rgb16()), _rgb16().mean() / 257),
    "tiff gray 16-bit": (_encode(".tiff", _gradient16()), 127.5),
    "pgm 16-bit": (_encode(".pgm", _gradient16()), 127.5),
    "jpeg 2000 gray 16-bit": (_encode(".jp2", _gradient16()), 127.5),
    "avif 10-bit": (_encode(".avif", np.dstack([_gradient16() >> 6] * 3), cv2.IMWRITE_AVIF_DEPTH, 10), 127.5),
    "tiff float in [0, 1]": (_encode(".tiff", (_gradient16() / 65535).astype(np.float32)), 127.5),
    "pfm float in [0, 1]": (_encode(".pfm", np.dstack([_gradient16() / 65535] * 3).astype(np.float32)), 127.5),
}


@pytest.mark.parametrize("name", DEEP_IMAGES)
def test_deep_images_decode_to_their_content(name):
    """img2dataset's own path clipped these to white (16-bit: mean 254) or black (float: mean 0-1)."""
    data, mean = DEEP_IMAGES[name]
    img = decode(np.frombuffer(data, np.uint8))
    assert img.dtype == np.uint8 and img.shape[:2] == (64, 256)
    assert abs(img.mean() - mean) < 1.5, (name, img.mean(), mean)


def test_a_deep_alpha_is_scaled_with_its_colour():
    rgba = np.dstack([_rgb16(), np.full(_rgb16().shape[:2], 32768, np.uint16)])
    img = decode(np.frombuffer(_encode(".png", rgba), np.uint8))
    assert img.dtype == np.uint8 and img.shape[2] == 4
    assert set(np.unique(img[..., 3])) == {128}
    assert abs(img[..., :3].mean() - _rgb16().mean() / 257) < 1.5


@pytest.mark.parametrize("data, why", [
    (_pil_bytes(Image.fromarray(_gradient16().astype(np.int32)), "TIFF"), "32-bit signed integer samples"),
    (_encode(".tiff", (_gradient16() / 65535 * 3).astype(np.float32)), "32-bit float samples outside [0, 1]"),
])
def test_samples_without_a_display_mapping_are_refused(data, why):
    with pytest.raises(UnsupportedImage, match=r"^unsupported_image: .*" + re.escape(why)):
        decode(np.frombuffer(data, np.uint8))


def _colour_bars() -> np.ndarray:
    rgb = np.zeros((24, 48, 3), np.uint8)
    rgb[:, :16], rgb[:, 16:32], rgb[:, 32:] = (230, 20, 20), (20, 230, 20), (20, 20, 230)
    return rgb


def _palette_with_transparency() -> bytes:
    img = Image.fromarray(_colour_bars()).convert("P")
    return _pil_bytes(img, "PNG", transparency=0)


EIGHT_BIT_MODES = {  # PIL writes each; PIL's own decoder is the truth
    "1-bit png": _pil_bytes(Image.fromarray(_colour_bars()).convert("1"), "PNG"),
    "palette png": _pil_bytes(Image.fromarray(_colour_bars()).convert("P"), "PNG"),
    "palette png with transparency": _palette_with_transparency(),
    "gray + alpha png": _pil_bytes(Image.fromarray(_colour_bars()).convert("LA"), "PNG"),
    "cmyk jpeg": _pil_bytes(Image.fromarray(_colour_bars()).convert("CMYK"), "JPEG", quality=100),
    "gray jpeg": _pil_bytes(Image.fromarray(_colour_bars()).convert("L"), "JPEG", quality=100),
    "gif": _pil_bytes(Image.fromarray(_colour_bars()), "GIF"),
}


@pytest.mark.parametrize("name", EIGHT_BIT_MODES)
def test_other_modes_decode_as_pil_shows_them(name):
    data = EIGHT_BIT_MODES[name]
    img = decode(np.frombuffer(data, np.uint8))
    truth = Image.open(io.BytesIO(data))
    if img.ndim == 3 and img.shape[2] == 4:
        ours, theirs = img[..., [2, 1, 0, 3]], np.asarray(truth.convert("RGBA"))
    elif img.ndim == 3:
        ours, theirs = img[..., ::-1], np.asarray(truth.convert("RGB"))
    else:
        ours, theirs = img, np.asarray(truth.convert("L"))
    assert img.dtype == np.uint8
    assert np.abs(ours.astype(int) - theirs).max() <= 3, name


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pil_applies_it(orientation, fmt):
    rng = np.random.default_rng(orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _pil_bytes(Image.fromarray((rng.random((30, 50, 3)) * 255).astype(np.uint8)), fmt,
                      exif=exif.tobytes(), **({} if fmt == "PNG" else {"quality": 100}))
    truth = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    img = decode(np.frombuffer(data, np.uint8))[..., ::-1]
    assert img.shape == truth.shape and np.array_equal(img, truth)


# -- URLs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, sent", [
    ("http://example.com/café.jpg", "http://example.com/caf%C3%A9.jpg"),
    ("http://example.com/a b.jpg", "http://example.com/a%20b.jpg"),
    (" http://exa\tmple.com/a\n.jpg\t ", "http://example.com/a.jpg"),  # tabs, newlines and the ends go
    ("http://example.com/a%20b.jpg", "http://example.com/a%20b.jpg"),  # escapes stay as they are
    ("http://example.com/p?q=a b&x=é#frag é", "http://example.com/p?q=a%20b&x=%C3%A9"),  # no fragment sent
    ("http://example.com/{a}`b`\"c\"<d>", "http://example.com/%7Ba%7D%60b%60%22c%22%3Cd%3E"),
    ("http://example.com/p?'q'", "http://example.com/p?%27q%27"),
    ("http://example.com/a|b^c[d]", "http://example.com/a|b^c[d]"),  # not in the path percent-encode set
    ("http:\\\\example.com\\a\\b.jpg", "http://example.com/a/b.jpg"),
    ("HTTP://EXAMPLE.com", "http://example.com/"),
    ("http://example.com:080/a", "http://example.com:80/a"),
    ("http://ex%41mple.com/", "http://example.com/"),
    ("http://bücher.example/x.jpg", "http://xn--bcher-kva.example/x.jpg"),  # RFC 3492's example
    ("http://例え.テスト/パス", "http://xn--r8jz45g.xn--zckzah/%E3%83%91%E3%82%B9"),  # IANA's IDN test domain
    ("https://ｅｘａｍｐｌｅ.com/x", "https://example.com/x"),  # UTS 46 maps full-width letters
    ("http://a_b.example.com/x", "http://a_b.example.com/x"),
    ("http://[::1]:8080/x", "http://[::1]:8080/x"),
    ("http://0x7f.0.0.1/x", "http://0x7f.0.0.1/x"),  # the address guard judges what it resolves to
])
def test_request_url_encodes_as_browsers_do(url, sent):
    assert request_url(url) == sent


@pytest.mark.parametrize("url, why", [
    ("http://user:pass@example.com/x.jpg", "credentials"),
    ("http://example.com:99999/x.jpg", "port 99999 is out of range"),
    ("http://example.com:8a/x.jpg", "port '8a' is not a number"),
    ("http://exa mple.com/x.jpg", "contains ' '"),
    ("http://a..b.com/x.jpg", "empty or over-long label"),
    ("http://1.2.3.256/x.jpg", "not an IPv4 address"),
    ("http://[::1/x.jpg", "not an IPv6 address"),
    ("file:///etc/passwd", "scheme 'file' is not fetched"),
    ("ftp://example.com/x.jpg", "scheme 'ftp' is not fetched"),
    ("//example.com/x.jpg", "no scheme"),
])
def test_request_url_refuses_what_nothing_can_fetch(url, why):
    with pytest.raises(InvalidURL, match=r"^invalid_url: .*" + re.escape(why)):
        request_url(url)


def test_refusals_and_url_faults_are_permanent_statuses():
    assert classify_failure("invalid_url: credentials in the URL", "failed_to_download") == "invalid_url"
    assert classify_failure("unsupported_image: 1-channel 32-bit float ...", "failed_to_resize") == "unsupported_image"
    # what urllib says of URLs that reach it anyway (a redirect's Location)
    assert classify_failure("URL can't contain control characters. '/a b' (found at least ' ')",
                            "failed_to_download") == "invalid_url"
    assert classify_failure("nonnumeric port: '8a'", "failed_to_download") == "invalid_url"
    assert classify_failure("'ascii' codec can't encode character '\\xe9' in position 9: ordinal not in range(128)",
                            "failed_to_download") == "invalid_url"
    assert classify_failure("<urlopen error no host given>", "failed_to_download") == "invalid_url"
    # a name that does not resolve now may later: still transient
    assert classify_failure("<urlopen error [Errno -2] Name or service not known>",
                            "failed_to_download") == "network_error"
    assert {"invalid_url", "unsupported_image"} <= set(ledger.PERMANENT_FAILURES)
    assert not {"invalid_url", "unsupported_image"} & set(ledger.TRANSIENT_FAILURES)


# -- through run_download, against a loopback server ----------------------------------------------------------


class _Files(ThreadingHTTPServer):
    """Serves `files` (raw request path without its query -> body) and records every raw request target."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        self.files, self.hits = files, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.hits.append(self.path)
                body = server.files.get(self.path.split("?", 1)[0])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def files_server():
    server = _Files({})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _download(tmp_path, server: _Files, urls: list[str]):
    """run_download over `urls`; (ledger table, {url: (shard parquet row, published RGB image)})."""
    rows = sorted(({"uid": compute_uid(f"picture {i}", u), "url": u, "text": f"picture {i}", "page_url": None,
                    "wat_path": None} for i, u in enumerate(urls)), key=lambda r: r["uid"])
    part = tmp_path / "part-0000-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), part)
    config = load_config(overrides={
        "storage_root": str(tmp_path / "root"), "download.timeout": 5, "download.retries": 1,
        "download.processes_count": 1, "download.thread_count": 4,
        "download.allowed_private_addresses": [f"127.0.0.1:{server.server_address[1]}"]})
    pool = PoolLayout(config.storage_root, "v1")
    stats = run_download(Partition(str(part), len(rows), 0), pool, config)
    table = ledger.read(pool.ledger)
    ledger.check_accounts_for(table, [r["uid"] for r in rows], "download of awkward inputs")
    published = {}
    for tar_path in stats.outputs:
        meta = {r["key"]: r for r in pq.read_table(tar_path.removesuffix(".tar") + ".parquet").to_pylist()}
        with tarfile.open(tar_path) as tar:
            for name in tar.getnames():
                if name.endswith(".jpg"):
                    key = name.removesuffix(".jpg")
                    sample = json.loads(tar.extractfile(f"{key}.json").read())
                    img = np.asarray(Image.open(tar.extractfile(name)).convert("RGB")).astype(float)
                    published[sample["url"]] = (meta[key], img)
    return table, published


def _exif_rotated_jpeg() -> bytes:
    """Stored 100 wide, 40 high, red in its top-left corner; EXIF orientation 6: shown turned 90° clockwise."""
    stored = np.full((40, 100, 3), 255, np.uint8)
    stored[:10, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _pil_bytes(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.slow
def test_deep_and_rotated_images_are_published_as_seen(tmp_path, files_server):
    big = np.tile(np.linspace(0, 65535, 2000).round().astype(np.uint16), (1200, 1))  # resized to 512 wide
    rgba = np.dstack([_rgb16(), np.full(_rgb16().shape[:2], 32768, np.uint16)])
    files_server.files.update({
        "/gray16.png": _encode(".png", _gradient16()),
        "/rgb16.png": _encode(".png", _rgb16()),
        "/rgba16.png": _encode(".png", rgba),
        "/gray16-big.png": _encode(".png", big),
        "/rotated.jpg": _exif_rotated_jpeg(),
        "/int32.tiff": _pil_bytes(Image.fromarray(_gradient16().astype(np.int32)), "TIFF"),
    })
    base = f"http://127.0.0.1:{files_server.server_address[1]}"
    table, published = _download(tmp_path, files_server, [base + p for p in files_server.files])

    statuses = dict(zip(table["url"].to_pylist(), table["status"].to_pylist()))
    assert statuses.pop(base + "/int32.tiff") == "unsupported_image"
    assert set(statuses.values()) == {"downloaded"}
    for path, mean in [("/gray16.png", 127.5), ("/rgb16.png", _rgb16().mean() / 257),
                       ("/rgba16.png", _half_alpha_on_white(_rgb16())), ("/gray16-big.png", big.mean() / 257)]:
        meta, img = published[base + path]
        assert abs(img.mean() - mean) < 3, (path, img.mean(), mean)  # img2dataset alone: 254
    meta, img = published[base + "/gray16-big.png"]
    assert (meta["original_width"], meta["original_height"], meta["width"]) == (2000, 1200, 512)

    meta, img = published[base + "/rotated.jpg"]
    assert img.shape[:2] == (100, 40) and (meta["width"], meta["height"]) == (40, 100)
    assert (meta["original_width"], meta["original_height"]) == (40, 100)  # the upright image's
    red = (img[..., 0] > 200) & (img[..., 1] < 80)
    rows, cols = np.nonzero(red)
    assert rows.max() < 25 and cols.min() > 25  # the stored top-left corner is shown top-right


@pytest.mark.slow
def test_urls_are_requested_as_browsers_encode_them(tmp_path, files_server):
    jpeg = _pil_bytes(Image.fromarray(np.full((32, 32, 3), 90, np.uint8)), "JPEG")
    files_server.files.update({p: jpeg for p in ("/img/caf%C3%A9.jpg", "/img/a%20b.jpg", "/img/tab.jpg",
                                                 "/img/q.jpg", "/img/back/slash.jpg", "/img/%7Bx%7D.jpg")})
    p = files_server.server_address[1]
    base = f"http://127.0.0.1:{p}"
    expected = {  # URL as written: (status, the request target the server must have seen)
        f"{base}/img/café.jpg": ("downloaded", "/img/caf%C3%A9.jpg"),
        f"{base}/img/a b.jpg": ("downloaded", "/img/a%20b.jpg"),
        f"{base}/img/t\tab.jpg": ("downloaded", "/img/tab.jpg"),
        f"{base}/img/q.jpg?name=été&x=a b": ("downloaded", "/img/q.jpg?name=%C3%A9t%C3%A9&x=a%20b"),
        f"{base}\\img\\back\\slash.jpg": ("downloaded", "/img/back/slash.jpg"),
        f"{base}/img/{{x}}.jpg": ("downloaded", "/img/%7Bx%7D.jpg"),
        f"http://user:secret@127.0.0.1:{p}/img/a%20b.jpg": ("invalid_url", None),
        "http://127.0.0.1:99999/img/tab.jpg": ("invalid_url", None),
        f"http://127.0.0.1:{p}x/img/tab.jpg": ("invalid_url", None),
        f"http://127.0.0.1 :{p}/img/tab.jpg": ("invalid_url", None),
        "http://1.2.3.256/img/tab.jpg": ("invalid_url", None),
        "file:///etc/passwd": ("invalid_url", None),
        f"ftp://127.0.0.1:{p}/img/tab.jpg": ("invalid_url", None),
    }
    table, published = _download(tmp_path, files_server, list(expected))

    got = dict(zip(table["url"].to_pylist(), table["status"].to_pylist()))  # the ledger keeps the URL as written
    assert got == {url: status for url, (status, _) in expected.items()}
    images = [h for h in files_server.hits if h not in ("/robots.txt", "/.well-known/tdmrep.json")]  # the host's rules
    assert sorted(images) == sorted(target for _, target in expected.values() if target)
    messages = dict(zip(table["url"].to_pylist(), table["message"].to_pylist()))
    assert "credentials" in messages[f"http://user:secret@127.0.0.1:{p}/img/a%20b.jpg"]
    assert "scheme 'file'" in messages["file:///etc/passwd"]
    assert set(table["attempt"].to_pylist()) == {1}
    assert set(published) == {url for url, (status, _) in expected.items() if status == "downloaded"}
