"""A synthetic Common Crawl: real WAT files whose image links point at the local server.

Deterministic from the seed. Every unique (alt text, URL) pair the extractor
should find is written to ``crawl-data/{crawl_id}/truth.parquet`` with its kind
and the ledger status the download must give it, so tests and the demo can
check the whole chain. `generate_world` writes several weekly crawls into one
source, each repeating some pairs of the one before, as real crawls do.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.config import DEFAULT_CRAWL_ID
from ..core.schema import compute_uid
from ..embedded.captions import LANGUAGES, PHOTO_CAPTIONS, TEMPLATES, translate
from ..embedded.images import CLASSES, EVAL_VARIANTS, FACE_PHOTOS, PHOTOS
from .evalsuite import EVAL_IMAGES, class_at
from .hosts import expected_status, host_base

log = logging.getLogger(__name__)


# What the web gives: the content of the pool's samples, as shares of the pool (the samples that
# download and survive the NSFW and eval-dedup stages). Each share comes from a figure of DataComp's
# paper (arXiv 2304.14108) about CommonPool; README "The synthetic crawl" gives the figure and where it
# is, and the test checks a generated crawl against these numbers. Attributes of each kind: the
# caption's language, whether it passes DataComp's caption-length rule (> 2 words, > 5 characters),
# whether the image passes the size rule (min side >= 200 px, aspect ratio <= 3), and whether a CLIP
# model scores the pair high (it describes something the image shows).
#
#   English 49.2% (fastText, Table 25); caption length passes 68%; English and length 37%; size and aspect
#   61%; all three (the basic filter) 23.3%; English with B/32 score >= 0.28 (the LAION-2B filter) 10.2%,
#   of which ~40% are captions that match text or a logo drawn on an unrelated image (T-MARS, arXiv
#   2307.03132, on LAION); B/32 >= 0.28 alone 30% (Table 16), so 19.8% of the pool is non-English and
#   well aligned, with the same 40% of logo matches (nothing says a non-English caption that CLIP scores
#   high describes its picture more often than an English one does).
CONTENT: dict[str, float] = {
    # English, aligned: 6.1%
    "described": 0.038,             # a shape picture, its class in an English template
    "described_thumbnail": 0.016,   # the same under 200 px
    "photo": 0.007,                 # a photograph (scikit-image's), described; some show faces
    # English, scored high but not describing the picture: 4.1%
    "logo_match": 0.041,            # an unrelated picture with a small shape drawn on it; the caption names the shape
    # English, length passes, not aligned
    "wrong_label": 0.114,           # a shape with another class's caption (or one attribute wrong)
    "off_topic": 0.114,             # page boilerplate ("free shipping on all orders") beside a picture
    "banner": 0.040,                # an ad banner (aspect ratio 4.7-8) and its ad copy
    # English, length fails: 12.2%
    "uninformative": 0.082,         # file names, "click here", "image"
    "icon": 0.040,                  # a small web icon: "menu", "search"
    # not English: 50.8%; scored high: 19.8%, of which 40% (as of the English ones) match a drawn logo
    "non_english": 0.119,           # a shape described in French, German, Spanish, Italian or Portuguese
    "non_english_logo_match": 0.079,  # a shape drawn on an unrelated picture, named in those languages
    "non_english_off_topic": 0.112,  # boilerplate in those languages
    "non_english_short": 0.198,     # one or two words ("Bild", "imagen 3")
}
# Share of each kind's pictures that are thumbnails (under 200 px), so that 61% of the pool passes the
# size rule: kinds not listed are always one or the other (see _link)
THUMBNAIL_SHARE = {"wrong_label": 0.355, "off_topic": 0.355, "uninformative": 0.5, "non_english": 0.566,
                   "non_english_off_topic": 0.34, "non_english_short": 0.34}
# near-duplicates: 22% of the medium pool has one at DataComp's T_ADC = 0.1 (Appendix K, Table 9): a
# sample of this share repeats the picture and caption of an earlier one under another URL
NEAR_DUPLICATE_SHARE = 0.22
# removed by the pool stages, as shares of what downloads: toxic captions (Detoxify at 0.1 flags 3.6%
# of CommonPool's captions, Table 4) and near-duplicates of evaluation images (2.8%, Appendix F)
POOL_REMOVED: dict[str, tuple[float, str]] = {"unsafe_caption": (0.036, "nsfw_text"),
                                              "eval_duplicate": (0.028, "eval_duplicate")}
# Delivery faults and the download's failure statuses, as shares of all links. CommonPool's own funnel
# lost 58% of its URLs to dead links and errors (section 3.2); here they are ~10%: a dead link costs a
# request and tells the comparison of subsets nothing. redirect and slow deliver a sample drawn like the
# pool's content (CONTENT), oversized a picture of its own under such a sample's caption: faults of
# delivery say nothing of content. (They once delivered a described shape every time, which made 2.8%
# of the pool aligned English pairs beyond CONTENT's 6.1%, and 8% of what the basic filter keeps.)
DELIVERY: dict[str, tuple[float, str]] = {
    "redirect": (0.01, "downloaded"),
    "slow": (0.01, "downloaded"),
    "oversized": (0.004, "downloaded"),
    "http_404": (0.03, "http_error"),
    "http_500": (0.01, "server_error"),
    "timeout": (0.004, "timeout"),
    "truncated": (0.01, "truncated"),
    "not_image": (0.01, "not_image"),
    "decompression_bomb": (0.0005, "image_too_large"),
    "opted_out": (0.01, "opted_out"),
}


_CONTENT_WEIGHTS = [w / sum(CONTENT.values()) for w in CONTENT.values()]


def _kinds() -> dict[str, tuple[float, str]]:
    """kind -> (share of all links, ledger status the download must give it)."""
    delivered = 1.0 - sum(w for w, _ in DELIVERY.values())
    removed = sum(w for w, _ in POOL_REMOVED.values())
    kinds = {k: (w * delivered * (1 - removed), "downloaded") for k, w in CONTENT.items()}
    kinds |= {k: (w * delivered, "downloaded") for k, (w, _) in POOL_REMOVED.items()}
    return kinds | DELIVERY


# kind -> (weight, ledger status the download must give it)
KINDS: dict[str, tuple[float, str]] = _kinds()

NOISE_CAPTIONS = ("click here", "image", "logo", "IMG_{n}.jpg", "DSC{n}.JPG", "thumbnail {n}", "untitled",
                  "photo", "view", "image {n}")
ICON_CAPTIONS = ("menu", "search", "facebook", "twitter", "cart", "next", "arrow", "close")
OFF_TOPIC = ("free shipping on all orders over $50", "click here to read the full article",
             "posted by admin in uncategorized", "add to cart and save today", "view larger image of this item",
             "our team is here to help you", "subscribe to our newsletter for updates",
             "terms and conditions apply to this offer", "best deals of the week on home decor",
             "return to the main page of our site")
AD_COPY = ("save 20% on your first order today", "limited time offer: buy now", "sign up for a free trial today",
           "the best prices in town, guaranteed", "download our app and get a bonus")
FOREIGN_OFF_TOPIC = ("livraison gratuite dès 50 euros", "jetzt kaufen und sparen heute", "añadir al carrito ahora mismo",
                     "spedizione gratuita per tutti gli ordini", "clique aqui para ler mais", "voir toutes nos offres du jour")
FOREIGN_SHORT = ("Bild", "imagen {n}", "foto", "immagine", "Abbildung {n}", "photo {n}", "produto", "Startseite")
# explicit and abusive wording that Detoxify and alt-profanity-check both flag
UNSAFE_CAPTIONS = ("horny sluts porn video {c}", "hot milf fucked hard {c}", "nude pussy pics xxx {c}",
                   "fuck this {c} shit")


@dataclass(frozen=True)
class CrawlSpec:
    n_urls: int = 1000
    seed: int = 0
    base_url: str = "http://127.0.0.1:8765"
    urls_per_file: int = 5000
    crawl_id: str = DEFAULT_CRAWL_ID
    faults: bool = True  # bad JSON, a broken gzip member, a record without HTML
    # image numbers start here, so that crawls of one world link different images
    first_image: int = 0
    # pairs of the previous crawl that this one links again, as a fraction of its own
    repeat_fraction: float = 0.0
    # 0: every page and image on base_url's host; N: each page and its images on one of N hosts of the
    # synthetic web (hosts.py: their robots.txt, TDMRep and rate limits decide some URLs' fates)
    hosts: int = 0
    plain_hosts: bool = False  # hosts that say nothing (no robots.txt, TDMRep or rate limit): benchmarks


# The final status of a downloaded sample of each kind after the pool stages;
# other kinds end with their download status.
FINAL_STATUS = {"unsafe_caption": "nsfw_text", "eval_duplicate": "eval_duplicate"}


def expected_final(kind: str) -> str:
    status = KINDS[kind][1]
    return FINAL_STATUS.get(kind, "kept") if status == "downloaded" else status


def _other(label: str, rng: np.random.Generator) -> str:
    """Another class: either one sharing the colour or the shape (a CLIP model still scores it fairly
    high), or any other."""
    color, shape = label.split(" ")
    if rng.random() < 0.5:
        near = [c for c in CLASSES if c != label and (c.split(" ")[0] == color or c.split(" ")[1] == shape)]
        return str(rng.choice(near))
    return str(rng.choice([c for c in CLASSES if c != label]))


def _link(kind: str, n: int, rng: np.random.Generator) -> tuple[str, str]:
    """(path on the server, alt text) of one image link of `kind`."""
    label = CLASSES[int(rng.integers(len(CLASSES)))]
    color, shape = label.split(" ")
    folder = "thumb" if rng.random() < THUMBNAIL_SHARE.get(kind, 0.0) else "shape"
    shape_path = f"/img/{folder}/{color}/{shape}/{n}.jpg"
    caption = str(rng.choice(TEMPLATES)).format(c=label)
    if kind == "described":
        return f"/img/shape/{color}/{shape}/{n}.jpg", caption
    if kind == "described_thumbnail":
        return f"/img/thumb/{color}/{shape}/{n}.jpg", caption
    if kind == "logo_match":
        return f"/img/logo/{color}/{shape}/{n}.jpg", str(rng.choice(TEMPLATES[:2] + TEMPLATES[3:])).format(c=label)
    if kind == "wrong_label":
        return shape_path, str(rng.choice(TEMPLATES)).format(c=_other(label, rng))
    if kind in ("off_topic", "non_english_off_topic"):
        picture = shape_path if rng.random() < 0.5 else f"/img/product/{'thumb' if folder == 'thumb' else 'picture'}/{n}.jpg"
        return picture, str(rng.choice(OFF_TOPIC if kind == "off_topic" else FOREIGN_OFF_TOPIC))
    if kind == "banner":
        return f"/img/banner/{n}.jpg", str(rng.choice(AD_COPY))
    if kind == "uninformative":
        return shape_path, str(rng.choice(NOISE_CAPTIONS)).format(n=n)
    if kind == "icon":
        return f"/img/icon/{n}.png", str(rng.choice(ICON_CAPTIONS))
    if kind == "non_english":
        return shape_path, translate(label, str(rng.choice(LANGUAGES)))
    if kind == "non_english_logo_match":
        return f"/img/logo/{color}/{shape}/{n}.jpg", translate(label, str(rng.choice(LANGUAGES)))
    if kind == "non_english_short":
        return shape_path, str(rng.choice(FOREIGN_SHORT)).format(n=n)
    if kind == "unsafe_caption":
        return shape_path, str(rng.choice(UNSAFE_CAPTIONS)).format(c=label)
    if kind == "photo":
        name = str(rng.choice(PHOTOS))
        return f"/img/photo/{name}/{n}.jpg", PHOTO_CAPTIONS[name]
    if kind == "eval_duplicate":
        index = int(rng.integers(0, EVAL_IMAGES))
        variant = str(rng.choice(EVAL_VARIANTS))
        return f"/img/evaldup/{index}/{variant}/{n}.jpg", str(rng.choice(TEMPLATES)).format(c=class_at(index))
    if kind in ("redirect", "slow", "oversized"):  # a fault of delivery around a sample of the pool's content
        content = list(CONTENT)
        inner, text = _link(content[int(rng.choice(len(content), p=_CONTENT_WEIGHTS))], n, rng)
        return {"redirect": f"/redirect{inner}", "slow": f"/slow{inner}", "oversized": f"/img/oversized/{n}.jpg"}[kind], text
    described = f"/img/shape/{color}/{shape}/{n}.jpg"
    paths = {
        "opted_out": f"/noai{described}",
        "http_404": f"/missing/{n}.jpg",
        "http_500": f"/error/{n}.jpg",
        "timeout": f"/hang/{n}.jpg",
        "truncated": f"/truncated{described}",
        "not_image": f"/html/{n}.jpg",
        "decompression_bomb": f"/bomb/{n}.png",
    }
    return paths[kind], caption


def _record(page_url: str, payload: dict, record_type: str = "metadata") -> bytes:
    body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    header = (
        "WARC/1.0\r\n"
        f"WARC-Type: {record_type}\r\n"
        f"WARC-Target-URI: {page_url}\r\n"
        "WARC-Date: 2026-11-22T00:00:00Z\r\n"
        f"WARC-Record-ID: <urn:uuid:{uuid.UUID(hashlib.md5(page_url.encode()).hexdigest())}>\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return gzip.compress(header + body + b"\r\n\r\n", compresslevel=6, mtime=0)


def _envelope(page_url: str, links: list[dict], base: str | None = None) -> dict:
    head: dict = {"Title": "synthetic page"}
    if base:
        head["Base"] = base
    return {
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": page_url},
            "Payload-Metadata": {
                "Actual-Content-Type": "application/http; msgtype=response",
                "HTTP-Response-Metadata": {
                    "Response-Message": {"Status": "200"},
                    "HTML-Metadata": {"Head": head, "Links": links},
                },
            },
        }
    }


def _kind_schedule(spec: CrawlSpec, rng: np.random.Generator) -> list[str]:
    """Every kind at least once (small crawls still show every case), then by weight."""
    names = list(KINDS)
    weights = np.array([KINDS[k][0] for k in names])
    rest = rng.choice(len(names), size=max(spec.n_urls - len(names), 0), p=weights / weights.sum())
    return (names + [names[i] for i in rest])[: spec.n_urls]


TRUTH_COLUMNS = ("uid", "url", "text", "kind", "expected_status", "expected_final", "has_face", "first_crawl",
                 "near_duplicate_of")


def generate_crawl(out_dir: str | Path, spec: CrawlSpec, progress: Callable[[int], None] | None = None,
                   previous: pa.Table | None = None) -> dict:
    """Write WAT files, ``wat.paths.gz``, ``truth.parquet`` and ``crawl.json`` under ``crawl-data/{id}/``.

    `progress`, if given, is called with the number of URLs of each WAT file
    written. `previous`, a truth table, is the crawl whose pairs this one repeats
    (``spec.repeat_fraction`` of its own number, on top of them).
    """
    out = Path(out_dir)
    crawl_dir = out / "crawl-data" / spec.crawl_id
    rel_dir = Path("crawl-data") / spec.crawl_id / "segments" / "0" / "wat"
    (out / rel_dir).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    base = spec.base_url.rstrip("/")
    kinds = _kind_schedule(spec, rng)
    truth: dict[str, list] = {c: [] for c in TRUTH_COLUMNS}
    repeats = previous.to_pylist() if previous is not None and spec.repeat_fraction > 0 else []
    repeats = [repeats[j] for j in rng.permutation(len(repeats))][: int(spec.repeat_fraction * spec.n_urls)]
    seen: list[tuple[str, str]] = []
    originals: list[tuple[str, str, str, str]] = []  # (kind, path, caption, uid) of the content samples so far
    wat_paths: list[str] = []
    page_no, i = 0, 0
    n_files = max(1, -(-spec.n_urls // spec.urls_per_file))
    for file_no in range(n_files):
        rel = rel_dir / f"{spec.crawl_id}-{file_no:05d}.warc.wat.gz"
        end = min(spec.n_urls, (file_no + 1) * spec.urls_per_file)
        with open(out / rel, "wb") as f:
            f.write(_record(f"{base}/", {"warcinfo": spec.crawl_id}, record_type="warcinfo"))
            if spec.faults and file_no == 0:
                f.write(_record(f"{base}/bad-json", b'{"Envelope": {"Payload-Metadata": '))
                f.write(_record(f"{base}/robots.txt", {"Envelope": {"Payload-Metadata": {}}}))
                broken = bytearray(_record(f"{base}/broken", _envelope(f"{base}/broken", [
                    {"path": "IMG@/src", "url": f"/img/shape/red/circle/lost-{k}.jpg", "alt": "lost"} for k in range(3)
                ])))
                broken[len(broken) // 2 : len(broken) // 2 + 8] = b"\x00garbage"
                f.write(bytes(broken))
            while i < end:
                page_no += 1
                site = host_base(base, (spec.first_image + page_no) % spec.hosts, spec.plain_hosts) if spec.hosts \
                    else base
                page_url = f"{site}/site/{spec.first_image + page_no}/page.html"
                links: list[dict] = []
                for _ in range(min(int(rng.integers(1, 9)), end - i)):
                    if seen and rng.random() < 0.03:  # the same pair on another page: a uid duplicate
                        path_url, text = seen[int(rng.integers(len(seen)))]
                        links.append({"path": "IMG@/src", "url": path_url, "alt": text})
                        continue
                    if repeats and rng.random() < spec.repeat_fraction:  # a pair an earlier crawl holds
                        row = repeats.pop()
                        for column in TRUTH_COLUMNS:
                            truth[column].append(row.get(column, ""))
                        links.append({"path": "IMG@/src", "url": row["url"], "alt": row["text"]})
                    kind = kinds[i]
                    path, text = _link(kind, spec.first_image + i, rng)
                    original = ""
                    # (not among the first links: those show every kind once)
                    if kind in CONTENT and i >= len(KINDS) and originals and rng.random() < NEAR_DUPLICATE_SHARE:
                        # the picture and caption of an earlier sample, served from another URL
                        kind, source_path, text, original = originals[int(rng.integers(len(originals)))]
                        path = f"/cdn/{spec.first_image + i}{source_path}"
                    elif kind in CONTENT:
                        originals.append((kind, path, text, compute_uid(text, f"{site}{path}")))
                    style = rng.random()
                    if style < 0.4:
                        link_url = f"{site}{path}"
                    elif style < 0.7:
                        link_url = path
                    else:
                        link_url = "../.." + path
                    url = f"{site}{path}"
                    uid = compute_uid(text, url)
                    status = expected_status(url, KINDS[kind][1])  # its host's rules first
                    truth["uid"].append(uid)
                    truth["url"].append(url)
                    truth["text"].append(text)
                    truth["kind"].append(kind)
                    truth["expected_status"].append(status)
                    truth["expected_final"].append(expected_final(kind) if status == KINDS[kind][1] else status)
                    truth["has_face"].append(any(f"/img/photo/{name}/" in path for name in FACE_PHOTOS))
                    truth["first_crawl"].append(spec.crawl_id)
                    truth["near_duplicate_of"].append(original)
                    seen.append((url if spec.hosts else link_url, text))  # a relative link: its own page's host
                    links.append({"path": "IMG@/src", "url": link_url, "alt": text})
                    i += 1
                # links the extractor must drop
                links.append({"path": "IMG@/src", "url": f"/img/shape/red/circle/noalt-{page_no}.jpg"})
                links.append({"path": "IMG@/src", "url": f"/img/spacer-{page_no}.gif", "alt": "   "})
                if page_no % 5 == 0:
                    links.append({"path": "IMG@/src", "url": "data:image/gif;base64,R0lGODlhAQABAAAAACw=", "alt": "pixel"})
                    links.append({"path": "A@/href", "url": f"{base}/site/{page_no + 1}/page.html", "text": "next"})
                links.insert(int(rng.integers(len(links) + 1)), {"path": "IMG@/src", "url": "javascript:void(0)", "alt": "js"})
                f.write(_record(page_url, _envelope(page_url, links)))
        wat_paths.append(str(rel))
        if progress:
            progress(end - file_no * spec.urls_per_file)
    with gzip.open(crawl_dir / "wat.paths.gz", "wt") as f:
        f.write("\n".join(wat_paths) + "\n")
    table = pa.table(truth)
    pq.write_table(table, crawl_dir / "truth.parquet")
    summary = {
        "crawl_id": spec.crawl_id,
        "seed": spec.seed,
        "base_url": base,
        "urls": len(truth["uid"]),
        "unique_uids": len(set(truth["uid"])),
        "repeated_from_previous": sum(c != spec.crawl_id for c in truth["first_crawl"]),
        "wat_files": [str(out / p) for p in wat_paths],
        "wat_listing": str(crawl_dir / "wat.paths.gz"),
        "truth": str(crawl_dir / "truth.parquet"),
        "kinds": dict(Counter(truth["kind"])),
        "expected_status": dict(Counter(truth["expected_status"])),
        "expected_final": dict(Counter(truth["expected_final"])),
    }
    (crawl_dir / "crawl.json").write_text(json.dumps(summary, indent=2))
    log.info("synthetic crawl %s: %d URLs in %d WAT files under %s", spec.crawl_id, summary["urls"],
             len(wat_paths), out)
    return summary


def weekly_crawl_ids(last: str, n: int) -> list[str]:
    """The ids of `n` weekly crawls ending with `last` (same prefix, one ISO week apart)."""
    import datetime

    from ..crawl.crawls import crawl_id_for_week, crawl_week

    monday = crawl_week(last)
    if monday is None:
        raise ValueError(f"crawl id {last!r} names no week (expected PREFIX-YYYY-WW)")
    prefix = last.rsplit("-", 2)[0]
    return [crawl_id_for_week(prefix, monday - datetime.timedelta(weeks=k)) for k in range(n - 1, -1, -1)]


def generate_world(out_dir: str | Path, spec: CrawlSpec, n_crawls: int, repeat_fraction: float = 0.1,
                   progress: Callable[[int], None] | None = None) -> list[dict]:
    """`n_crawls` weekly crawls in one source, the last one `spec.crawl_id`; each repeats pairs of the one before;
    the miniature WordNet that the text-based baseline reads (``{out_dir}/wordnet``); and an example
    dataset for the import DAG (``{out_dir}/own_data``).

    Each crawl has `spec.n_urls` pairs of its own (its images numbered apart
    from the other crawls') plus about `repeat_fraction` of that from the
    previous crawl, so cross-crawl deduplication has work to do.
    """
    summaries: list[dict] = []
    previous = None
    for k, crawl_id in enumerate(weekly_crawl_ids(spec.crawl_id, n_crawls)):
        crawl_spec = dataclasses.replace(spec, crawl_id=crawl_id, seed=spec.seed + k,
                                         first_image=spec.first_image + k * 1_000_000,
                                         repeat_fraction=repeat_fraction if previous is not None else 0.0)
        summaries.append(generate_crawl(out_dir, crawl_spec, progress, previous))
        previous = pq.read_table(summaries[-1]["truth"])
    # the text-based filtering baseline's WordNet and class list, in miniature (synthetic/wordnet.py)
    from ..core.layout import SyntheticWorld
    from .own_data import write_own_data
    from .wordnet import write_wordnet

    world = SyntheticWorld(str(out_dir))
    write_wordnet(world.wordnet)
    # an example dataset of your own, for the import DAG (synthetic/own_data.py)
    write_own_data(world.example_dataset)
    return summaries


def compare_with_truth(truth_path: str | Path, uids: list[str], statuses: list[str],
                       column: str = "expected_final") -> dict:
    """Ledger statuses against the crawl's expectations: {"matched": n, "mismatched": {...}}.

    `column` is ``expected_final`` for a pool's final statuses, ``expected_status``
    for the download stage alone.
    """
    truth = pq.read_table(truth_path, columns=["uid", "kind", column]).to_pydict()
    expected = {u: (k, e) for u, k, e in zip(truth["uid"], truth["kind"], truth[column])}
    mismatched: Counter = Counter()
    matched = 0
    for uid, status in zip(uids, statuses):
        kind, want = expected.get(uid, ("not_in_crawl", "-"))
        if status == want:
            matched += 1
        else:
            mismatched[f"{kind}: expected {want}, got {status}"] += 1
    return {"matched": matched, "mismatched": dict(mismatched)}
