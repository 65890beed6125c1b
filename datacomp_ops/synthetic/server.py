"""A local image server for the synthetic crawl: loopback only, images made on request.

Paths (all deterministic from the path itself). Pictures under 224 px hold the detail they would have
at DataComp's resolution, scaled to the miniature model's (`images.at_model_scale`).

    /img/shape/{color}/{shape}/{n}.jpg      a rendered shape, photo-sized (200-399 px)
    /img/thumb/{color}/{shape}/{n}.jpg      the same as a thumbnail (48-199 px)
    /img/icon/{n}.png                       a small web icon
    /img/banner/{n}.jpg                     an advertising banner (extreme aspect ratio)
    /img/product/picture|thumb/{n}.jpg      a picture of something outside the classes (photo-sized or a thumbnail)
    /img/logo/{color}/{shape}/{n}.jpg       a product picture with a small shape drawn in a corner
    /cdn/{n}/{path}                         /{path}: the same picture under another URL
    /img/photo/{name}/{n}.jpg               a crop of a scikit-image photograph
    /img/evaldup/{index}/{variant}/{n}.jpg  a near-duplicate of evaluation image `index`
    /img/oversized/{n}.jpg                  a 4000x3000 JPEG (resized by the download)
    /redirect/{path}                        302 to /{path}
    /elsewhere/{host}/{port}/{path}         302 to http://{host}:{port}/{path} (an open redirect)
    /slow/{path}                            /{path} after `slow_seconds`
    /noai/{path}                            /{path} with ``X-Robots-Tag: noai``
    /truncated/{path}                       /{path} cut in half, Content-Length of the whole
    /hang/...                               answers after `hang_seconds` (a client timeout)
    /missing/... /error/...                 404 and 500
    /html/...                               an HTML page where an image was promised
    /bomb/...                               a decompression-bomb PNG
    /robots.txt, /.well-known/tdmrep.json   what the requested host (its Host header) says: hosts.py

The server answers for every name of the synthetic web's hosts (hosts.py: s000.synthetic.test...), told
apart by the Host header, each with its robots.txt, tdmrep.json, TDM header and rate limit; it logs
every request with its arrival time, host and answer (`host_log`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

from ..embedded import images
from . import evalsuite, hosts

log = logging.getLogger(__name__)


class NotFound(Exception):
    pass


def _web_picture(img, fmt: str = "JPEG") -> tuple[bytes, str]:
    """A picture of the web (not a copy of an evaluation image), with the detail its size allows."""
    return images.encode(images.at_model_scale(img), fmt), f"image/{fmt.lower()}"


def render(path: str) -> tuple[bytes, str]:
    """(body, content type) of an image path under /img/."""
    parts = path.strip("/").split("/")
    if parts[:2] in (["img", "shape"], ["img", "thumb"]) and len(parts) == 5:
        color, shape = parts[2], parts[3]
        if color not in images.COLORS or shape not in images.SHAPES:
            raise NotFound(path)
        seed = images.seed_of(path)
        size = images.size_of(seed, images.PICTURE_SIZES if parts[1] == "shape" else images.THUMBNAIL_SIZES)
        return _web_picture(images.render_shape(color, shape, seed, size=size))
    if parts[:2] == ["img", "icon"] and len(parts) == 3:
        return _web_picture(images.icon(images.seed_of(path)), "PNG")
    if parts[:2] == ["img", "banner"] and len(parts) == 3:
        return _web_picture(images.banner(images.seed_of(path)))
    if parts[:2] == ["img", "product"] and len(parts) == 4 and parts[2] in ("picture", "thumb"):
        sizes = images.PICTURE_SIZES if parts[2] == "picture" else images.THUMBNAIL_SIZES
        return _web_picture(images.product(images.seed_of(path), sizes))
    if parts[:2] == ["img", "logo"] and len(parts) == 5:
        color, shape = parts[2], parts[3]
        if color not in images.COLORS or shape not in images.SHAPES:
            raise NotFound(path)
        return _web_picture(images.logo_on_product(color, shape, images.seed_of(path)))
    if parts[:2] == ["img", "photo"] and len(parts) == 4:
        if parts[2] not in images.PHOTOS:
            raise NotFound(path)
        return _web_picture(images.photo(parts[2], images.seed_of(path)))
    if parts[:2] == ["img", "evaldup"] and len(parts) == 5:
        index, variant = int(parts[2]), parts[3]
        if variant not in images.EVAL_VARIANTS:
            raise NotFound(path)
        if not 0 <= index < evalsuite.EVAL_IMAGES:
            raise NotFound(path)
        img = images.near_duplicate(evalsuite.image_at(index)[0], variant)
        return images.encode(img, quality=40 if variant == "reencoded" else 92), "image/jpeg"
    if parts[:2] == ["img", "oversized"]:
        return images.oversized(), "image/jpeg"
    raise NotFound(path)


class _Handler(BaseHTTPRequestHandler):
    server: "SyntheticImageServer"
    protocol_version = "HTTP/1.1"
    # headers and body leave in two writes: with Nagle's algorithm on, a keep-alive client's delayed ACK
    # holds each body back ~40 ms, which capped a 32-connection load test near 800 requests/s
    disable_nagle_algorithm = True

    def log_message(self, fmt: str, *args) -> None:  # quiet: the download logs failures
        log.debug(fmt, *args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None, length: int | None = None) -> None:
        self.answered = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        # a connection's first request arrived when it was accepted (its handler thread may start later)
        arrival = self.server.accepted.pop(self.request, None) or time.time()
        self.server.requests_served += 1  # under the GIL; read only as a rate
        self.server.request_log.append((arrival, self.path))  # list.append is atomic under the GIL
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        self.answered = None
        try:
            self._answer(host, hosts.policy(host))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeouts) before the answer: nothing to answer
        finally:
            self.server.host_log.append((arrival, host, self.path, self.answered))

    def _answer(self, host: str, rules: "hosts.HostPolicy") -> None:
        path = self.path.split("?", 1)[0]
        head, _, rest = path.lstrip("/").partition("/")
        render = self.server.render
        if rules.rate_limit and not self.server.admit(host, rules.rate_limit):
            self._send(429, b"too many requests", "text/plain", headers={"Retry-After": str(hosts.RETRY_AFTER_S)})
            return
        try:
            if path == "/robots.txt":
                if rules.robots_hangs:
                    time.sleep(self.server.hang_seconds)
                if rules.robots_error:
                    self._send(503, b"service unavailable", "text/plain")
                    return
                if rules.robots is None:
                    raise NotFound(path)
                self._send(200, rules.robots.encode(), "text/plain")
            elif path == "/.well-known/tdmrep.json":
                if rules.tdmrep is None:
                    raise NotFound(path)
                self._send(200, rules.tdmrep.encode(), "application/json")
            elif head == "img":
                self._send(200, *render(path), headers={"tdm-reservation": "1"} if rules.tdm_header else None)
            elif head == "cdn":
                self._send(200, *render("/" + rest.partition("/")[2]))
            elif head == "redirect":
                self.send_response(HTTPStatus.FOUND)
                self.send_header("Location", "/" + rest)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif head == "elsewhere":
                host, port, target = rest.split("/", 2)
                self.send_response(HTTPStatus.FOUND)
                self.send_header("Location", f"http://{host}:{int(port)}/{target}")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif head == "slow":
                time.sleep(self.server.slow_seconds)
                self._send(200, *render("/" + rest))
            elif head == "noai":
                self._send(200, *render("/" + rest), headers={"X-Robots-Tag": "noai, noimageai"})
            elif head == "truncated":
                body, ctype = render("/" + rest)
                self._send(200, body[: len(body) // 2], ctype, length=len(body))
                self.close_connection = True
            elif head == "hang":
                time.sleep(self.server.hang_seconds)
                self._send(200, images.encode(images.render_shape("red", "circle", 0)), "image/jpeg")
            elif head == "missing":
                self._send(404, b"not found", "text/plain")
            elif head == "error":
                self._send(500, b"internal server error", "text/plain")
            elif head == "html":
                self._send(200, b"<html><body><h1>Welcome</h1></body></html>", "text/html")
            elif head == "bomb":
                self._send(200, images.decompression_bomb(), "image/png")
            else:
                raise NotFound(path)
        except (NotFound, ValueError):
            self._send(404, b"not found", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeouts): nothing to answer


class SyntheticImageServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # img2dataset opens dozens of connections at once; socketserver's default
    # backlog of 5 drops SYNs and turns healthy images into client timeouts.
    request_queue_size = 1024

    def __init__(self, port: int = 0, hang_seconds: float = 30.0, slow_seconds: float = 0.3,
                 cache_images: bool = False):
        super().__init__(("127.0.0.1", port), _Handler)
        self.hang_seconds = hang_seconds
        self.slow_seconds = slow_seconds
        self.requests_served = 0
        # (arrival time, path) of every request: tests check what a download asked for
        self.request_log: list[tuple[float, str]] = []
        # (arrival time, host, path, status answered) of every request: what each host saw, and when
        self.host_log: list[tuple[float, str, str, int | None]] = []
        self._rate_lock = threading.Lock()
        self._arrivals: dict[str, list[float]] = {}  # a rate-limited host's arrivals in its last second
        self._paused_until: dict[str, float] = {}
        self.accepted: dict = {}  # socket -> when it was accepted
        # benchmarks keep every image made: timed downloads then measure the client, not the renderer
        self.render = functools.lru_cache(maxsize=None)(render) if cache_images else render

    def admit(self, host: str, per_second: int) -> bool:
        """Whether a rate-limited host serves a request now: under `per_second` in the last second and not
        paused; a request over the limit pauses it for its Retry-After."""
        with self._rate_lock:
            now = time.monotonic()
            if self._paused_until.get(host, 0.0) > now:
                return False
            recent = [t for t in self._arrivals.get(host, []) if now - t < 1.0]
            if len(recent) >= per_second:
                self._paused_until[host] = now + hosts.RETRY_AFTER_S
                self._arrivals[host] = recent
                return False
            self._arrivals[host] = recent + [now]
            return True

    def process_request(self, request, client_address):
        self.accepted[request] = time.time()  # in the accepting thread: the request's arrival, as a host counts it
        super().process_request(request, client_address)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


@contextlib.contextmanager
def serving(port: int = 0, hang_seconds: float = 30.0, slow_seconds: float = 0.3,
            cache_images: bool = False) -> Iterator[SyntheticImageServer]:
    """Run the server in a background thread for the duration of the block."""
    server = SyntheticImageServer(port, hang_seconds, slow_seconds, cache_images)
    thread = threading.Thread(target=server.serve_forever, name="synthetic-image-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
