import gzip
import io
import json
import time
import urllib.error
import urllib.request
from collections import Counter

import pyarrow.parquet as pq
import pytest
from PIL import Image

from datacomp_ops.crawl.wat import parse_wat_file
from datacomp_ops.embedded.images import CLASSES, eval_image, near_duplicate
from datacomp_ops.synthetic.crawl import KINDS, CrawlSpec, generate_crawl
from datacomp_ops.synthetic.evalsuite import generate_eval_suite


def test_crawl_is_deterministic_and_parses(tmp_path):
    spec = CrawlSpec(n_urls=150, seed=3, urls_per_file=100)
    a = generate_crawl(tmp_path / "a", spec)
    b = generate_crawl(tmp_path / "b", spec)
    assert [open(p, "rb").read() for p in a["wat_files"]] == [open(p, "rb").read() for p in b["wat_files"]]
    assert a["urls"] == 150 and len(a["wat_files"]) == 2
    assert set(a["kinds"]) == set(KINDS)  # every case present even in a small crawl
    with gzip.open(a["wat_listing"], "rt") as f:
        assert len(f.read().split()) == 2


def test_wat_files_read_with_fastwarc_and_warcio(tmp_path):
    from fastwarc.warc import ArchiveIterator as FastIterator
    from warcio.archiveiterator import ArchiveIterator as WarcioIterator

    summary = generate_crawl(tmp_path, CrawlSpec(n_urls=120, faults=False))
    path = summary["wat_files"][0]
    with open(path, "rb") as f:
        fast = [r.headers.get("WARC-Target-URI") for r in FastIterator(f)]
    with open(path, "rb") as f:
        slow = [r.rec_headers.get_header("WARC-Target-URI") for r in WarcioIterator(f)]
    assert fast == slow and len(fast) > 10
    with open(path, "rb") as f:
        record = next(r for r in WarcioIterator(f) if r.rec_type == "metadata")
        links = json.loads(record.content_stream().read())["Envelope"]["Payload-Metadata"][
            "HTTP-Response-Metadata"]["HTML-Metadata"]["Links"]
    assert any(link["path"] == "IMG@/src" and link.get("alt") for link in links)


def test_parsed_pairs_equal_the_truth(tmp_path):
    summary = generate_crawl(tmp_path, CrawlSpec(n_urls=400, urls_per_file=250))
    uids, counters = set(), Counter()
    for path in summary["wat_files"]:
        rows, c = parse_wat_file(path)
        uids |= set(rows["uid"].to_pylist())
        counters += c
    truth = set(pq.read_table(summary["truth"])["uid"].to_pylist())
    assert uids == truth
    assert counters["skipped:bad_json"] == 1 and counters["skipped:broken_gzip_member"] == 1
    assert counters["pairs"] > len(uids)  # the crawl repeats some pairs on other pages


def test_a_crawl_over_many_hosts_parses_to_its_truth_and_its_hosts_say_what_the_truth_expects(tmp_path,
                                                                                           image_server):
    import http.client
    from urllib.parse import urlsplit

    from datacomp_ops.synthetic import hosts

    summary = generate_crawl(tmp_path, CrawlSpec(n_urls=800, urls_per_file=400, hosts=40,
                                                 base_url=image_server.base_url))
    uids = set()
    for path in summary["wat_files"]:  # relative links resolve against their page's host
        uids |= set(parse_wat_file(path)[0]["uid"].to_pylist())
    truth = pq.read_table(summary["truth"]).to_pylist()
    assert uids == {r["uid"] for r in truth}
    assert len({urlsplit(r["url"]).hostname for r in truth}) == 40
    statuses = Counter(r["expected_status"] for r in truth)
    assert statuses["disallowed_robots"] and statuses["tdm_reserved"] and statuses["robots_unavailable"]
    # the server answers each name by its Host header
    port = image_server.server_address[1]

    def ask(host, path):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path, headers={"Host": f"{host}:{port}"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()

    assert ask(hosts.host_name(2), "/robots.txt")[2].decode() == hosts.POLICIES[2].robots
    assert ask(hosts.host_name(0), "/robots.txt")[0] == 404
    assert json.loads(ask(hosts.host_name(3), "/.well-known/tdmrep.json")[2])[0]["tdm-reservation"] == 1
    assert ask(hosts.host_name(4), "/img/shape/red/circle/1.jpg")[1].get("tdm-reservation") == "1"
    answers = [ask(hosts.host_name(45), f"/img/shape/red/circle/{i}.jpg")[:2] for i in range(hosts.RATE_LIMIT + 1)]
    assert [a[0] for a in answers] == [200] * hosts.RATE_LIMIT + [429]
    assert answers[-1][1]["Retry-After"] == str(hosts.RETRY_AFTER_S)
    assert ask(hosts.host_name(45), "/img/shape/red/circle/0.jpg")[0] == 429  # paused until then


def _get(url, timeout=5.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_server_cases(image_server):
    base = image_server.base_url
    status, headers, body = _get(f"{base}/img/shape/red/circle/1.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    img = Image.open(io.BytesIO(body))
    r, g, b = Image.open(io.BytesIO(body)).convert("RGB").resize((1, 1), Image.BOX).getpixel((0, 0))
    assert img.format == "JPEG" and r > b  # red dominates a red circle on a light background
    assert _get(f"{base}/img/shape/red/circle/1.jpg")[2] == body  # deterministic
    assert _get(f"{base}/missing/1.jpg")[0] == 404
    assert _get(f"{base}/error/1.jpg")[0] == 500
    assert _get(f"{base}/img/shape/purple/blob/1.jpg")[0] == 404
    status, _, redirected = _get(f"{base}/redirect/img/shape/red/circle/1.jpg")
    assert status == 200 and redirected == body
    status, headers, _ = _get(f"{base}/noai/img/shape/red/circle/1.jpg")
    assert status == 200 and "noai" in headers["X-Robots-Tag"]
    status, headers, _ = _get(f"{base}/html/1.jpg")
    assert headers["Content-Type"] == "text/html"
    start = time.monotonic()
    assert _get(f"{base}/slow/img/shape/red/circle/1.jpg")[0] == 200
    assert time.monotonic() - start >= image_server.slow_seconds
    big = Image.open(io.BytesIO(_get(f"{base}/img/oversized/1.jpg")[2]))
    assert big.size == (4000, 3000)
    Image.MAX_IMAGE_PIXELS = None
    bomb_bytes = _get(f"{base}/bomb/1.png")[2]
    bomb = Image.open(io.BytesIO(bomb_bytes))
    assert len(bomb_bytes) < 1_000_000 and bomb.size[0] * bomb.size[1] >= 100_000_000
    photo = Image.open(io.BytesIO(_get(f"{base}/img/photo/astronaut/3.jpg")[2]))
    assert min(photo.size) > 200


def test_server_truncates_and_hangs(image_server):
    import http.client

    with pytest.raises(http.client.IncompleteRead):
        urllib.request.urlopen(f"{image_server.base_url}/truncated/img/shape/red/circle/1.jpg", timeout=5).read()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        urllib.request.urlopen(f"{image_server.base_url}/hang/1.jpg", timeout=0.5).read()


def test_eval_duplicates_are_the_eval_images(image_server):
    img, label = eval_image(5)
    assert CLASSES[label] == CLASSES[5 % len(CLASSES)]
    served = Image.open(io.BytesIO(_get(f"{image_server.base_url}/img/evaldup/5/resized/1.jpg")[2]))
    assert served.size == near_duplicate(img, "resized").size == (192, 192)


def test_eval_suite_in_clip_benchmark_layout(tmp_path):
    """Every task of the miniature (ImageNet-like, its distribution shifts, VTAB-like, retrieval) is a
    clip_benchmark webdataset folder, the WinoGAViL-like one a cached Hugging Face split; eval_suite.json lists
    them with their groups."""
    import webdataset as wds

    from datacomp_ops.core import hf_arrow
    from datacomp_ops.embedded.images import COLORS
    from datacomp_ops.evaluation.tasks import tasks_from_suite
    from datacomp_ops.synthetic.evalsuite import EVAL_IMAGES, LAYOUT, class_at, image_at

    suite = generate_eval_suite(tmp_path, n_classification=24, n_retrieval=6, n_variant=8)
    cls_dir = tmp_path / "wds_synthetic_shapes"
    assert (cls_dir / "classnames.txt").read_text().split("\n")[:2] == CLASSES[:2]
    assert "{c}" in (cls_dir / "zeroshot_classification_templates.txt").read_text()
    samples = list(wds.WebDataset(str(cls_dir / "test" / "0.tar"), shardshuffle=False).decode("pil").to_tuple("jpg", "cls"))
    assert len(samples) == 24 and sorted({int(c) for _, c in samples}) == list(range(12))
    ret = list(wds.WebDataset(str(tmp_path / "wds_synthetic_retrieval" / "test" / "0.tar"), shardshuffle=False).decode("pil").to_tuple("jpg", "txt"))
    assert len(ret) == 6 and all(len(t.split("\n")) == 2 for _, t in ret)
    tasks = tasks_from_suite(suite, str(tmp_path))
    groups = {g: [t.key for t in tasks if g in t.groups] for g in ("imagenet", "imagenet_dist_shifts", "vtab", "retrieval")}
    assert groups == {"imagenet": ["synthetic/shapes"],
                      "imagenet_dist_shifts": [f"synthetic/shapes_{s}" for s in ("sketch", "background", "scale", "rendering")],
                      "vtab": ["synthetic/count", "synthetic/position", "synthetic/texture"],
                      "retrieval": ["synthetic/retrieval", "synthetic/association"]}
    for task in tasks:
        folder = tmp_path / task.folder
        if task.kind == "winogavil":  # WinoGAViL's columns, in the Hugging Face cache as DataComp's is
            rows = hf_arrow.read_table(hf_arrow.split_files(str(folder))).to_pylist()
            assert len(rows) == task.size and sorted({len(r["candidates"]) for r in rows}) == [5, 6, 10, 12]
            for r in rows:
                assert 2 <= len(r["associations"]) == r["num_associations"] <= len(r["candidates"]) // 2
                assert set(r["associations"]) < set(r["candidates"]) == {
                    f"s{i:06d}" for i in range(int(r["candidates"][0][1:]), int(r["candidates"][-1][1:]) + 1)}
                attribute = 0 if r["cue"] in COLORS else 1
                classes = [class_at(int(c[1:])) for c in r["candidates"]]
                assert [c.split(" ")[attribute] == r["cue"] for c in classes] == [
                    c in r["associations"] for c in r["candidates"]]
            continue
        names = (folder / "classnames.txt").read_text().splitlines() if task.kind != "retrieval" else []
        got = list(wds.WebDataset(str(folder / "test" / "0.tar"), shardshuffle=False))
        assert len(got) == task.size and all(s["__key__"].startswith("s") for s in got)
        if names:  # every class of a task appears, labels as named
            labels = {int(s["cls"]) for s in got}
            assert labels == set(range(min(len(names), task.size)))
    # images are unique per global index and the crawl's duplicates address all of them
    assert LAYOUT[-1][1] + LAYOUT[-1][2] == EVAL_IMAGES
    pictures = [image_at(first)[0].tobytes() for _, first, _ in LAYOUT]
    assert len(set(pictures)) == len(LAYOUT)


def test_the_count_and_texture_tasks_show_what_their_class_names_say():
    """Counted independently of the drawing code: blobs of the classes' exact colours in a count image
    (the scenes are noisy, the shapes are not), and each texture's share of a shape's pixels."""
    import numpy as np
    from scipy import ndimage

    from datacomp_ops.embedded.images import COLORS, COUNTS, TEXTURES, variant_image

    def inked(img):
        pixels = np.asarray(img)
        return np.any([np.all(pixels == c, axis=-1) for c in COLORS.values()], axis=0), np.all(pixels == 250, axis=-1)

    assert len(COUNTS) == len(TEXTURES) == 8  # CLEVR Counts' 8 classes; 8 of DTD's fills
    for index in range(2 * len(COUNTS)):
        img, label = variant_image("count", index)
        assert ndimage.label(inked(img)[0], structure=np.ones((3, 3)))[1] == label + 1, COUNTS[label]
    coverage = {}
    for index in range(len(TEXTURES)):
        img, label = variant_image("texture", index)
        ink, white = inked(img)
        coverage[TEXTURES[label]] = round(ink.sum() / (ink.sum() + white.sum()), 2)
    assert coverage["plain"] == 1.0 and all(0.1 < c < 0.8 for t, c in coverage.items() if t != "plain"), coverage


def test_compare_with_truth(tmp_path):
    from datacomp_ops.synthetic.crawl import compare_with_truth

    summary = generate_crawl(tmp_path, CrawlSpec(n_urls=40))
    truth = pq.read_table(summary["truth"]).to_pydict()
    statuses = list(truth["expected_status"])
    statuses[0] = "timeout" if statuses[0] != "timeout" else "downloaded"
    result = compare_with_truth(summary["truth"], truth["uid"], statuses, column="expected_status")
    assert result["matched"] == 39
    assert list(result["mismatched"].values()) == [1]
    # final statuses: the pool stages remove unsafe captions and eval duplicates, the rest is kept
    final = dict(zip(truth["kind"], truth["expected_final"]))
    assert final["unsafe_caption"] == "nsfw_text" and final["eval_duplicate"] == "eval_duplicate"
    assert final["described"] == "kept" and final["http_404"] == "http_error"
    assert compare_with_truth(summary["truth"], truth["uid"], truth["expected_final"])["matched"] == 40


def test_noise_shares_are_commonpools(tmp_path):
    """The generated crawl's pool has CommonPool's noise, measured on the captions and pictures themselves
    (the figures and their sources: crawl.py's CONTENT and the README's "The synthetic crawl")."""
    import numpy as np
    import pyarrow as pa

    from datacomp_ops.filtering.language import char_counts, fasttext_english, word_counts
    from datacomp_ops.synthetic.crawl import CONTENT, NEAR_DUPLICATE_SHARE
    from datacomp_ops.synthetic.server import render

    summary = generate_crawl(tmp_path, CrawlSpec(n_urls=12_000, urls_per_file=6000, faults=False))
    rows = [r for r in pq.read_table(summary["truth"]).to_pylist() if r["expected_final"] == "kept"]
    kinds = Counter(r["kind"] for r in rows)
    for kind, share in CONTENT.items():  # every kind at its share, within sampling error
        assert abs(kinds[kind] / len(rows) - share) < 4 * (share * (1 - share) / len(rows)) ** 0.5 + 0.002, kind
    duplicates = sum(bool(r["near_duplicate_of"]) for r in rows if r["kind"] in CONTENT)
    assert abs(duplicates / sum(kinds[k] for k in CONTENT) - NEAR_DUPLICATE_SHARE) < 0.03

    # DataComp's Table 25, measured as the basic filter measures it
    content = [r for r in rows if r["kind"] in CONTENT][:3000]
    captions = pa.array([r["text"] for r in content])
    english = fasttext_english(captions)
    length_ok = (word_counts(captions) > 2) & (char_counts(captions) > 5)
    sizes = []
    for r in content:
        path = "/" + r["url"].split("/", 3)[3]
        if path.startswith("/cdn/"):
            path = "/" + path.split("/", 3)[3]
        img = Image.open(io.BytesIO(render(path)[0]))
        sizes.append(min(img.size) >= 200 and max(img.size) / min(img.size) <= 3)
    size_ok = np.array(sizes)
    measured = {"english": english.mean(), "caption_length": length_ok.mean(), "image_size": size_ok.mean(),
                "english_and_length": (english & length_ok).mean(), "basic": (english & length_ok & size_ok).mean()}
    datacomp = {"english": 0.492, "caption_length": 0.68, "image_size": 0.61, "english_and_length": 0.37,
                "basic": 0.233}
    for key, want in datacomp.items():
        assert abs(measured[key] - want) < 0.04, (key, measured)


def test_small_pictures_hold_the_detail_of_their_size_at_the_models_scale():
    """A thumbnail of side s holds s * 32/224 px of detail (what it holds for DataComp's 224-px model,
    scaled to the miniature's 32 px); pictures of 224 px and more are served as drawn."""
    import numpy as np

    from datacomp_ops.embedded import images
    from datacomp_ops.synthetic.server import render

    def detail_lost(img: Image.Image, side: int) -> float:  # what a round trip through `side` px changes
        a = np.asarray(img.convert("RGB"), float)
        b = np.asarray(img.resize((side, side), Image.BOX).resize(img.size, Image.BILINEAR).convert("RGB"), float)
        return float(np.abs(a - b).mean())

    path = "/img/thumb/red/triangle/3.jpg"
    served = Image.open(io.BytesIO(render(path)[0]))
    side = min(served.size)
    assert side < 200
    sharp = images.render_shape("red", "triangle", images.seed_of(path), size=side)
    model_side = round(side * images.MODEL_SIDE / images.DATACOMP_SIDE)
    # the drawn thumbnail loses detail at its model-scale side; the served one has none left to lose
    assert detail_lost(sharp, model_side) > 2 * detail_lost(served, model_side)
    big = images.render_shape("red", "triangle", 7, size=300)
    assert images.at_model_scale(big) is big
