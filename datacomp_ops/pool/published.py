"""Pools from DataComp's published metadata: what download_upstream.py does, under the platform's ledger.

DataComp publishes each pool (small, medium, large, xlarge, datacomp_1b) as metadata, one parquet
per metadata shard: ``uid``, ``url``, ``text``, ``original_width``, ``original_height``,
``clip_b32_similarity_score``, ``clip_l14_similarity_score``, ``face_bboxes`` and ``sha256``, with
an npz of its four feature arrays beside (``b32_img``, ``b32_txt``, ``l14_img``, ``l14_txt``, row i
of the npz for row i of the parquet; download_upstream.py fetches them with ``--download_npz``).

Such a folder (local or ``s3://``; xlarge's ``part_*/`` subfolders too), or a chosen part of it,
becomes a pool of its own under ``{storage_root}/datasets/{name}`` that stays as published: its uids,
scores, features and face boxes are DataComp's, nothing is recomputed, and the metadata pass never
runs. The scan (`run_scan_published`) checks each new file, copies it (and its npz, when asked) into
the pool version's metadata folder as it is, and writes the URL parts the download reads (uid, url,
text, face_bboxes, sha256). A row that cannot be downloaded safely (no http(s) URL; a face box that
no blur could cover) is a counted skip with the ledger status ``invalid_metadata``. A file that cannot
be taken as DataComp's (unreadable, a column missing or of another type, a uid that is not 32 hex
digits, a uid twice, an npz whose rows do not match) stops the scan, naming the file and the problem,
before anything of the batch is written. A subset file (DataComp's ``u8,u8`` .npy) limits the pool to
its uids, as any subset of a published pool is one.

`run_publish_published` publishes the version: its manifest lists every imported metadata file (the
filtering baselines read them, so DataComp's baselines select on the published metadata before any
image is fetched) and the shards downloaded so far; the scale's pool file holds every valid uid.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import posixpath
import re
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core import ledger, storage, versions
from ..core.config import SCALES, load_config, pool_sizes
from ..core.layout import (
    EXAMPLE_PUBLISHED,
    CrawlLayout,
    PoolLayout,
    SyntheticWorld,
    check_name,
    dataset_root,
    pools_dir,
)
from ..core.schema import UID_DTYPE, in_subset, read_subset, sorted_uids, uid_strings_to_array, write_subset
from ..core.stats import Counters, StageStats
from ..crawl.source_files import PROCESSED, FileRead, new_rows, plan_reads, read_manifest, write_manifest
from ..download.partition import STAGE as DOWNLOAD
from .build import BuildSpec
from .byod import DatasetImportError
from .published_refresh import import_settings
from .unique_uids import UidCheck

log = logging.getLogger(__name__)

STAGE = "scan_published"
PUBLISH = "publish_published"
INVALID = "invalid_metadata"

# DataComp's published columns and the arrow type family each must have
PUBLISHED_COLUMNS: dict[str, str] = {
    "uid": "string", "url": "string", "text": "string", "original_width": "integer",
    "original_height": "integer", "clip_b32_similarity_score": "floating", "clip_l14_similarity_score": "floating",
    "face_bboxes": "boxes", "sha256": "string",
}
FEATURE_KEYS = ("b32_img", "b32_txt", "l14_img", "l14_txt")
# what the download needs of a published row; the URL parts carry it
URL_PART_SCHEMA = pa.schema([
    pa.field("uid", pa.string(), nullable=False), pa.field("url", pa.string(), nullable=False),
    pa.field("text", pa.string()), pa.field("page_url", pa.string()), pa.field("wat_path", pa.string()),
    pa.field("face_bboxes", pa.list_(pa.list_(pa.float64()))), pa.field("sha256", pa.string()),
])

COUNTERS = Counters.of(STAGE, ("records", "pairs", "urls_written", "files_processed", "files_already_imported",
                               "files_changed_read_again", "npz_copied"), ("skipped:",))

_UID = re.compile(r"^[0-9a-f]{32}$")
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def select_files(folder: str, shards: str = "") -> list[str]:
    """The folder's metadata parquet files in name order (xlarge's part_*/ subfolders too), or those that
    `shards` names: positions in that order ("0-9,12") or file names ("0a1b.parquet,...")."""
    files = sorted(set(storage.ls(folder, "*.parquet") + storage.ls(folder, "*/*.parquet")),
                   key=lambda p: (posixpath.basename(p), p))
    if not files:
        raise DatasetImportError(f"{folder}: no metadata .parquet files (DataComp's published layout: one parquet "
                                 f"per metadata shard, its .npz beside)")
    names = [posixpath.basename(p) for p in files]
    twice = sorted(n for n, k in Counter(names).items() if k > 1)
    if twice:
        raise DatasetImportError(f"{folder}: two metadata files are named {twice[0]} (in different subfolders); "
                                 f"a pool's metadata files need distinct names")
    if not shards.strip():
        return files
    chosen: list[str] = []
    for item in (s.strip() for s in shards.split(",") if s.strip()):
        found = _RANGE.match(item)
        if found:
            first, last = int(found.group(1)), int(found.group(2) or found.group(1))
            if last < first or last >= len(files):
                raise DatasetImportError(f"shards {item!r}: {folder} holds {len(files)} metadata files, "
                                         f"numbered 0-{len(files) - 1}")
            chosen += files[first:last + 1]
        elif item in names or f"{item}.parquet" in names:
            chosen.append(files[names.index(item if item in names else f"{item}.parquet")])
        else:
            raise DatasetImportError(f"shards {item!r}: neither a position (0-{len(files) - 1}, ranges as 3-7) nor "
                                     f"a metadata file of {folder}")
    return list(dict.fromkeys(chosen))


def npz_of(parquet: str) -> str:
    return parquet[: -len(".parquet")] + ".npz"


DOWNLOADS = ("all", "none", "subsets")


def make_published_spec(run_key: str, name: str, metadata: str, scale: str, shards: str = "", npz: bool = True,
                        subset: str = "", pool_version: str = "", overrides: Mapping[str, Any] | None = None,
                        config_path: str | None = None, download: str = "all",
                        download_only: list[str] | None = None) -> BuildSpec:
    """The import's spec: a build spec whose storage root is the pool's own, {storage_root}/datasets/{name}.

    `download`: ``all`` (download_upstream.py's default), ``none`` (the metadata alone, as its
    --skip_shards), or ``subsets``: the union of the `download_only` baselines' subsets of the pool's
    newest published version.
    """
    from ..embedded.clip_models import stand_ins_dir

    base = load_config(config_path, overrides)
    example = SyntheticWorld(base.crawl_source).published_metadata
    if not metadata and not base.crawl.source and storage.exists(example):
        # the embedded default's empty form: the synthetic world's pool in DataComp's published layout
        name, metadata = name or EXAMPLE_PUBLISHED, example
    if not name:
        raise DatasetImportError("name the pool (name): it lives under {storage_root}/datasets/{name}")
    check_name("pool name", name, DatasetImportError)
    if pool_version:
        check_name("pool version", pool_version, versions.VersionError)
    if scale not in SCALES:
        raise DatasetImportError(f"scale {scale!r}: the published pool's scale is one of {', '.join(SCALES)}")
    if not metadata:
        raise DatasetImportError("name the folder of DataComp's published metadata (metadata)")
    if subset and not storage.exists(subset):
        raise DatasetImportError(f"subset file {subset} does not exist")
    labels = [label.strip() for label in download_only or [] if label.strip()]
    if download not in DOWNLOADS:
        raise DatasetImportError(f"download {download!r}: one of {', '.join(DOWNLOADS)}")
    if (download == "subsets") != bool(labels):
        raise DatasetImportError("download=subsets names the baselines whose subsets to download (download_only), "
                                 "and download_only needs download=subsets")
    root = dataset_root(base.storage_root, name)
    config = load_config(config_path, dict(overrides or {}) | {
        "storage_root": root, "scale": scale, "models.embedded_dir": stand_ins_dir(base),
        "evaluation.sets_dir": base.eval_sets_dir})
    storage.check_writable(root)
    files = select_files(metadata, shards)
    version = versions.open_version(root, run_key, pool_version)
    safe_key = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_key)
    crawl = CrawlLayout(root, name)
    return BuildSpec(crawl_id=name, pool_version=version, inputs=files, report=crawl.report(f"{safe_key}.json"),
                     config=config.to_dict(),
                     source={"kind": "published", "metadata": metadata, "scale": scale, "shards": shards,
                             "npz": bool(npz), "subset": subset, "download": download, "download_only": labels})


# -- checking one published file ---------------------------------------------------------------------------


def _family(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "floating"
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and \
            (pa.types.is_list(t.value_type) or pa.types.is_large_list(t.value_type)) and \
            (pa.types.is_floating(t.value_type.value_type) or pa.types.is_integer(t.value_type.value_type)):
        return "boxes"
    return str(t)


def _check_schema(path: str, schema: pa.Schema) -> None:
    names = schema.names
    missing = [c for c in PUBLISHED_COLUMNS if c not in names]
    if missing:
        lower = {n.lower(): n for n in names}
        hints = [f"{lower[c.lower()]!r} for {c!r}" for c in missing if c.lower() in lower]
        raise DatasetImportError(
            f"{path}: no column {', '.join(missing)} (DataComp's published metadata has "
            f"{', '.join(PUBLISHED_COLUMNS)}; this file has {', '.join(names)})"
            + (f"; misnamed? {', '.join(hints)}" if hints else ""))
    wrong = [(c, schema.field(c).type, want) for c, want in PUBLISHED_COLUMNS.items()
             if _family(schema.field(c).type) != want]
    if wrong:
        c, got, want = wrong[0]
        want = "a list of [x1, y1, x2, y2] boxes" if want == "boxes" else want
        raise DatasetImportError(f"{path}: column {c} is {got}, DataComp's is {want}")


def _box_problem(boxes) -> str | None:
    """Why a row's face boxes cannot be blurred (img2dataset clips a box to the image, so one partly outside
    is blurred where it overlaps); None when they can."""
    for box in boxes or ():
        if box is None or len(box) != 4 or any(v is None or not math.isfinite(v) for v in box):
            return f"face box {box} is not four finite numbers"
        x1, y1, x2, y2 = box
        if x2 <= x1 or y2 <= y1:
            return f"face box {box} is empty (x2 <= x1 or y2 <= y1)"
        if x2 <= 0 or y2 <= 0 or x1 >= 1 or y1 >= 1:
            return f"face box {box} lies outside the image (boxes are fractions of its width and height)"
    return None


def _rows_with_bad_boxes(column: pa.ChunkedArray) -> np.ndarray:
    """Per row, whether one of its face boxes cannot be blurred (see _box_problem), without a Python loop."""
    rows = column.combine_chunks()
    bad = np.zeros(len(rows), bool)
    boxes = pc.list_flatten(rows)  # one entry per box; a row without boxes (empty or null) has none
    if len(boxes) == 0:
        return bad
    box_row = pc.list_parent_indices(rows).to_numpy()
    four = pc.fill_null(pc.equal(pc.list_value_length(boxes), 4), False).to_numpy(zero_copy_only=False)
    coords = pc.list_flatten(boxes).cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls are NaN
    coord_box = pc.list_parent_indices(boxes).to_numpy()
    xy = coords[four[coord_box]].reshape(-1, 4)
    ok = np.zeros(len(boxes), bool)
    x1, y1, x2, y2 = xy.T
    ok[four] = np.isfinite(xy).all(axis=1) & (x2 > x1) & (y2 > y1) & (x2 > 0) & (y2 > 0) & (x1 < 1) & (y1 < 1)
    bad[box_row[~ok]] = True
    return bad


def npz_shapes(url: str) -> dict[str, tuple[int, ...]]:
    """Each array's shape in an npz from its .npy header alone: a member is not read past its header (a
    medium pool's features are 0.6 TB; the copy reads them once, the check need not)."""
    headers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    out = {}
    with storage.open_file(url) as f, zipfile.ZipFile(f) as archive:
        for name in archive.namelist():
            with archive.open(name) as member:
                version = np.lib.format.read_magic(member)
                if version not in headers:
                    raise ValueError(f"{name}: .npy format version {version}")
                out[name.removesuffix(".npy")] = tuple(headers[version](member)[0])
    return out


@dataclass
class _Read:
    """One published file, checked: its rows that enter the pool, those skipped (with why), its npz."""

    path: str
    valid: pa.Table
    invalid: list[tuple[str, str, str]]  # (uid, url, why)
    counters: Counter
    npz_dims: dict[str, int]
    size: int
    fingerprint: str


def _read_published(path: str, with_npz: bool, subset: np.ndarray | None) -> _Read:
    try:
        size, fingerprint = storage.fingerprint(path)
        with storage.open_file(path) as f:
            schema = pq.read_schema(f)
            _check_schema(path, schema)
            f.seek(0)
            table = pq.read_table(f, columns=list(PUBLISHED_COLUMNS))
    except DatasetImportError:
        raise
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise DatasetImportError(f"{path}: unreadable parquet: {type(exc).__name__}: {exc}") from None
    n = table.num_rows
    uids = table["uid"]
    bad = pc.invert(pc.fill_null(pc.match_substring_regex(uids, _UID.pattern), False))
    if pc.any(bad).as_py():
        first = pc.index(bad, True).as_py()
        raise DatasetImportError(f"{path}: row {first}: uid {uids[first].as_py()!r} is not 32 lowercase hex digits "
                                 f"({pc.sum(bad).as_py()} rows like it); DataComp's uids are md5 hex digests")
    if pc.count_distinct(uids).as_py() != n:
        counts = pc.value_counts(uids)
        twice = counts.filter(pc.greater(counts.field("counts"), 1))
        raise DatasetImportError(f"{path}: uid {twice[0]['values'].as_py()} is on {twice[0]['counts'].as_py()} rows "
                                 f"({len(twice)} uids repeat); a pool's uids are unique")
    dims: dict[str, int] = {}
    if with_npz:
        npz = npz_of(path)
        if not storage.exists(npz):
            raise DatasetImportError(f"{path}: no npz beside it ({npz}); fetch the features (download_upstream.py "
                                     f"--download_npz), or import without them")
        try:
            shapes = npz_shapes(npz)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DatasetImportError(f"{npz}: unreadable npz: {type(exc).__name__}: {exc}") from None
        absent = [k for k in FEATURE_KEYS if k not in shapes]
        if absent:
            raise DatasetImportError(f"{npz}: no {', '.join(absent)} (DataComp's npz holds "
                                     f"{', '.join(FEATURE_KEYS)}; this one {', '.join(shapes)})")
        for key in FEATURE_KEYS:
            shape = shapes[key]
            if len(shape) != 2 or shape[0] != n:
                raise DatasetImportError(f"{npz}: {key} has shape {shape}, but {path} has {n} rows: row i of "
                                         f"the npz must be row i of the parquet")
            dims[key] = shape[1]

    counters = Counter(records=n)
    keep = np.ones(n, bool)
    if subset is not None:
        keep = in_subset(uid_strings_to_array(uids, where=path), subset)
        counters["skipped:not_in_subset"] = int(n - keep.sum())
    http = pc.fill_null(pc.or_(pc.starts_with(table["url"], "http://"), pc.starts_with(table["url"], "https://")),
                        False).to_numpy(zero_copy_only=False)
    unblurrable = _rows_with_bad_boxes(table["face_bboxes"])
    invalid: list[tuple[str, str, str]] = []
    for i in np.flatnonzero(keep & (~http | unblurrable)):  # few: their reasons one by one
        url = table["url"][int(i)].as_py()
        why = "no http(s) URL" if not http[i] else _box_problem(table["face_bboxes"][int(i)].as_py())
        invalid.append((uids[int(i)].as_py(), url or "", why))
        counters["skipped:no_http_url" if not http[i] else "skipped:bad_face_box"] += 1
    keep &= http & ~unblurrable
    rows = table.filter(pa.array(keep))
    valid = pa.table({
        "uid": rows["uid"].cast(pa.string()), "url": rows["url"].cast(pa.string()),
        "text": rows["text"].cast(pa.string()), "page_url": pa.nulls(rows.num_rows, pa.string()),
        "wat_path": pa.array([path] * rows.num_rows, pa.string()),
        "face_bboxes": rows["face_bboxes"].cast(pa.list_(pa.list_(pa.float64()))),
        "sha256": rows["sha256"].cast(pa.string())}, schema=URL_PART_SCHEMA)
    counters["pairs"] = valid.num_rows
    return _Read(path, valid, invalid, counters, dims, size, fingerprint)


# -- the scan: published files into the pool ------------------------------------------------------------------


def _rows_in(path: str) -> int:
    """A parquet's row count from its footer; 0 for one that cannot be read (its scan names it)."""
    try:
        with storage.open_file(path) as f:
            return pq.read_metadata(f).num_rows
    except (OSError, pa.ArrowException, ValueError):
        return 0


def _earlier_parts(crawl: CrawlLayout) -> list[str]:
    """What earlier imports of the pool hold: their URL parts, and the parts of the rows they found invalid."""
    return storage.ls(crawl.urls, "part-*.parquet") + storage.ls(pools_dir(crawl.root), f"*/ledger/{DOWNLOAD}/{crawl.crawl_id}-scan-*.parquet")


def _read_uids(path: str) -> pa.ChunkedArray:
    with storage.open_file(path) as f:
        return pq.read_table(f, columns=["uid"])["uid"]


def _uid_pairs(read: "_Read") -> np.ndarray:
    return np.concatenate([uid_strings_to_array(read.valid["uid"], where=read.path),
                           uid_strings_to_array(pa.array([u for u, _, _ in read.invalid], pa.string()),
                                                where=read.path)])


def _check_unique(check: UidCheck, earlier: int, crawl: CrawlLayout) -> None:
    """No uid twice across the batch's files, nor one an earlier import holds (the check's first `earlier`
    sources); each file was checked alone as it was read."""
    repeat = check.first_repeat()
    if repeat is None:
        return
    if check.sources.index(repeat.first) < earlier:
        raise DatasetImportError(f"uid {repeat.uid} of {repeat.second} was imported into pool {crawl.crawl_id} "
                                 f"before (from another file): a pool's uids are unique")
    raise DatasetImportError(f"uid {repeat.uid} is in {repeat.first} and in {repeat.second}: a pool's uids "
                             f"are unique")


class _PartWriter:
    """The batch's URL parts, written as the files are read: the valid rows in the published order (as
    download_upstream.py fetches), `size` rows a part. Uncommitted until the source-file manifest lists
    the batch; `discard` takes them back when a later check fails (and the next scan removes what a
    process that died left)."""

    def __init__(self, crawl: CrawlLayout, batch: int, size: int):
        self.crawl, self.batch, self.size = crawl, batch, size
        self.pending: list[pa.Table] = []
        self.rows = 0
        self.written: list[dict[str, Any]] = []

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.rows += table.num_rows
        while self.rows >= self.size:
            self._write(self.size)

    def _write(self, n: int) -> None:
        rows = pa.concat_tables(self.pending)
        path = storage.join(self.crawl.urls, f"part-{self.batch:04d}-{len(self.written):05d}.parquet")
        with storage.atomic_write(path) as f:
            pq.write_table(rows.slice(0, n), f)
        self.written.append({"path": path, "rows": n})
        rest = rows.slice(n)
        self.pending, self.rows = [rest], rest.num_rows

    def close(self) -> list[dict[str, Any]]:
        if self.rows:
            self._write(self.rows)
        return self.written

    def discard(self) -> None:
        for part in self.written:
            storage.remove(part["path"])
        self.written = []


def _copy_target(pool: PoolLayout, path: str) -> str:
    return storage.join(pool.metadata, posixpath.basename(path))


def run_scan_published(spec: BuildSpec) -> StageStats:
    """Stage entry point: the published files no earlier import read, checked and copied into the pool, and
    the URL parts of their rows (the stats' outputs); the batch report goes to spec.report.

    Each new file is checked as it is read, its valid rows written to the batch's URL parts (uncommitted,
    taken back when a check fails), then no uid twice across the files and the pool's earlier imports
    (pool/unique_uids.py: bounded memory); then the copies and the invalid rows' ledger part, then the
    source-file manifest (the commit point), then the report.
    """
    if storage.exists(spec.report):
        log.info("report %s exists: the scan already committed", spec.report)
        return StageStats.from_dict(storage.read_json(spec.report)["stats"])
    start = time.monotonic()
    config, crawl, pool, source = spec.platform_config, spec.crawl, spec.pool, spec.source
    manifest = read_manifest(crawl)
    batch = max(manifest["batch"].to_pylist(), default=-1) + 1
    for part in storage.ls(crawl.urls, "part-*.parquet"):  # leftovers of a scan that never committed
        if int(part.rsplit("/", 1)[-1].split("-")[1]) >= batch:
            storage.remove(part)
    plan = plan_reads(manifest, spec.inputs)
    stats = StageStats(STAGE)
    stats.add("files_already_imported", plan.already_processed)
    stats.add("files_changed_read_again", plan.changed)
    report: dict[str, Any] = {"kind": "published", "batch": None, "partitions": [], "files": [], "unreadable": []}
    if not plan.todo:
        log.info("pool %s: all %d metadata files already imported", crawl.crawl_id, len(spec.inputs))
        storage.write_json(spec.report, report | {"stats": stats.to_dict()})
        return stats

    subset = read_subset(source["subset"]) if source.get("subset") else None
    earlier = _earlier_parts(crawl)  # after the leftovers' removal
    expected = sum(_rows_in(p) for p in earlier + plan.todo)
    writer = _PartWriter(crawl, batch, config.extract.urls_per_partition)
    reads: list[_Read] = []  # each file's checks and counts; its rows go to the URL parts as it is read
    dims: dict[str, tuple[int, str]] = {}
    try:
        with UidCheck(expected, config.extract.uid_check_memory_mb << 20) as check:
            for path in earlier:
                check.add(path, uid_strings_to_array(_read_uids(path), where=path))
            for path in plan.todo:
                read = _read_published(path, source.get("npz", True), subset)
                for key, dim in read.npz_dims.items():
                    if dims.setdefault(key, (dim, read.path))[0] != dim:
                        raise DatasetImportError(f"{npz_of(read.path)}: {key} has {dim} dimensions, "
                                                 f"{npz_of(dims[key][1])} {dims[key][0]}: one pool's features "
                                                 f"come from one model")
                check.add(read.path, _uid_pairs(read))
                writer.add(read.valid)
                reads.append(dataclasses.replace(read, valid=read.valid.slice(0, 0)))
            _check_unique(check, len(earlier), crawl)
        report["partitions"] = writer.close()
    except BaseException:
        writer.discard()
        raise

    # everything checked: the copies, the invalid rows' ledger part, then the manifest (the commit point)
    for read in reads:
        storage.copy(read.path, _copy_target(pool, read.path))
        if source.get("npz", True):
            storage.copy(npz_of(read.path), _copy_target(pool, npz_of(read.path)))
            stats.add("npz_copied")
        stats.counters.update(read.counters)
        report["files"].append({"source": read.path, "copy": _copy_target(pool, read.path),
                                "rows": read.counters["records"], "valid": read.counters["pairs"],
                                "invalid": len(read.invalid)})
    invalid = [(u, url, why, r.path) for r in reads for u, url, why in r.invalid]
    if invalid:
        part = ledger.make_part(DOWNLOAD, [u for u, *_ in invalid], [url for _, url, _, _ in invalid],
                                [INVALID] * len(invalid), [f"{why} ({path})" for *_, why, path in invalid],
                                [0] * len(invalid), None)
        ledger.write_part(pool.ledger_part(DOWNLOAD, f"{crawl.crawl_id}-scan-{batch:04d}"), part)
    write_manifest(crawl, manifest, new_rows(
        [FileRead(r.path, PROCESSED, r.counters["records"], r.counters["pairs"], len(r.invalid), None, r.size,
                  r.fingerprint) for r in reads], batch, plan, config.extract.max_read_attempts))
    stats.add("files_processed", len(reads))
    stats.add("urls_written", sum(p["rows"] for p in report["partitions"]))
    stats.seconds = time.monotonic() - start
    stats.outputs = [p["path"] for p in report["partitions"]]
    report |= {"batch": batch, "stats": stats.to_dict()}
    storage.write_json(spec.report, report)
    log.info("pool %s batch %d: %s", crawl.crawl_id, batch, stats.to_dict()["counters"])
    return stats


# -- publishing a version of a published pool ---------------------------------------------------------------


def imported_metadata(pool: PoolLayout, crawl: CrawlLayout) -> list[str]:
    """The metadata copies of `pool`'s own batches: those of its folder whose source file is processed (a
    copy left by a scan that never committed is not listed)."""
    done = {posixpath.basename(r["wat_path"]) for r in read_manifest(crawl).to_pylist()
            if r["status"] == PROCESSED}
    return [p for p in storage.ls(pool.metadata, "*.parquet") if posixpath.basename(p) in done]


def _metadata_rows(parquets: list[str]) -> int:
    total = 0
    for path in parquets:
        with storage.open_file(path) as f:
            total += pq.read_metadata(f).num_rows
    return total


def _url_part_uids(crawl: CrawlLayout) -> np.ndarray:
    arrays = [uid_strings_to_array(_read_uids(path), where=path) for path in storage.ls(crawl.urls, "part-*.parquet")]
    return sorted_uids(np.concatenate(arrays)) if arrays else np.zeros(0, UID_DTYPE)


def run_publish_published(spec: BuildSpec) -> StageStats:
    """Publish the version: every imported metadata file (the parent's, then its own), every downloaded
    shard, the scale's pool of every valid uid, and the decay report. A version that imported nothing
    and downloaded nothing is not published (counter ``unchanged``)."""
    start = time.monotonic()
    pool, crawl, scale = spec.pool, spec.crawl, spec.source["scale"]
    stats = StageStats(PUBLISH)
    if storage.exists(pool.manifest):
        return StageStats.from_dict(storage.read_json(pool.manifest)["stats"])
    parent_name = versions.info(pool.root, pool.version).get("parent")
    parent = storage.read_json(PoolLayout(pool.root, parent_name).manifest) if parent_name else {}
    own_metadata = [p for p in imported_metadata(pool, crawl) if p not in parent.get("metadata", [])]
    markers = storage.ls(storage.join(pool.markers, DOWNLOAD), "*")
    own_shards = sorted(pool.download(s) for m in markers for s in storage.read_json(m).get("shards", []))
    if not own_metadata and not markers:  # a download that only failed still tells the decay: published
        stats.add("unchanged")
        log.info("pool %s adds nothing to %s: not published", pool.version, parent_name or "an empty pool")
        return stats
    uids = _url_part_uids(crawl)
    write_subset(pool.scale(scale), uids)
    size = pool_sizes(spec.platform_config)[scale]
    history = ledger.history(*versions.ledger_dirs(pool.root, pool.version))
    current = ledger.latest(history)
    stats.add("samples", len(uids))
    stats.add("metadata_files", len(parent.get("metadata", [])) + len(own_metadata))
    stats.add("shards", len(parent.get("shards", [])) + len(own_shards))
    stats.seconds = time.monotonic() - start
    stats.outputs = [pool.manifest, pool.scale(scale)]
    manifest_metadata = parent.get("metadata", []) + own_metadata
    manifest = {
        "pool_version": pool.version, "parent": parent_name, "chain": versions.chain(pool.root, pool.version),
        "storage_root": pool.root, "kind": "published", "source": spec.source["metadata"],
        "published_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "import": import_settings(spec.source, spec.platform_config),  # what a refresh runs again
        "samples": len(uids),
        "added": {"metadata_files": len(own_metadata), "shards": len(own_shards)},
        "crawls": [crawl.crawl_id],
        "shards": parent.get("shards", []) + own_shards,
        "metadata": manifest_metadata,
        "scales": {scale: {"samples": len(uids), "pool_size": size, "built": True, "complete": len(uids) >= size,
                           "path": pool.scale(scale), "all_rows": len(uids) == _metadata_rows(manifest_metadata)}},
        "ledger": {"urls": current.num_rows, "statuses": ledger.counts(current) if current.num_rows else {}},
        "models": [], "thresholds": {},
        "stats": stats.to_dict(),
    }
    storage.write_json(pool.manifest, manifest)
    storage.write_json(pool.decay_report, published_decay(spec))
    log.info("published pool %s of %s: %d samples, %d metadata files, %d shards", pool.version, crawl.crawl_id,
             len(uids), len(manifest["metadata"]), len(manifest["shards"]))
    return stats


# what a published pool holds of a uid: its image as published, or (download.hash_mismatch=keep) as it is now
HELD = ("downloaded", ledger.HASH_MISMATCH)


def published_decay(spec: BuildSpec) -> dict:
    """The pool's decay report (pool/decay.py) as of the spec's version."""
    from ..download.plan import url_parts
    from .decay import decay_report

    return decay_report(spec.pool, url_parts(spec.pool.root), HELD, spec.platform_config.download.max_attempts)


# -- downloads: all of the pool, or the union of chosen subsets -------------------------------------------------

# DataComp's disk table: the small pool's 12.8M samples take 450 GB of tars (medium's 128M, 4.5 TB)
DATACOMP_BYTES_PER_SAMPLE = 450e9 / 12.8e6


def bytes_per_sample(manifest: dict) -> tuple[float, str]:
    """(mean bytes per held sample, where the figure comes from): the pool's own shards once it holds some,
    DataComp's disk table before."""
    shards = manifest.get("shards", [])
    held = manifest.get("ledger", {}).get("statuses", {})
    samples = sum(held.get(s, 0) for s in HELD)
    if shards and samples:
        total = sum(storage.fingerprint(s)[0] for s in shards)
        return total / samples, f"this pool's {len(shards)} shards"
    return DATACOMP_BYTES_PER_SAMPLE, "DataComp's disk table (450 GB for the small pool's 12.8M samples)"


def write_download_limit(spec: BuildSpec, subsets: Mapping[str, str]) -> dict[str, Any]:
    """The union of `subsets` (label -> DataComp subset file of the pool's scale) as the run's download
    limit, and what it saves against downloading the whole pool (also written beside it)."""
    pool, scale = spec.pool, spec.source["scale"]
    parent = versions.latest(pool.root)
    if not parent:
        raise DatasetImportError(f"pool {spec.crawl_id} has no published version: import its metadata first, filter "
                                 f"it, then download the subsets")
    manifest = storage.read_json(PoolLayout(pool.root, parent).manifest)
    members = read_subset(manifest["scales"][scale]["path"])
    union = np.unique(np.concatenate([read_subset(path) for path in subsets.values()])) if subsets else members[:0]
    outside = len(union) - int(in_subset(union, members).sum())
    if outside:
        raise DatasetImportError(f"{outside} uids of the subsets {', '.join(subsets)} are not in pool "
                                 f"{spec.crawl_id} {parent} at scale {scale}: were they drawn from another pool?")
    write_subset(pool.download_limit, union)
    per_sample, basis = bytes_per_sample(manifest)
    saved = len(members) - len(union)
    info = {"labels": sorted(subsets), "limit": pool.download_limit, "urls": int(len(union)),
            "pool_urls": int(len(members)), "saved_urls": int(saved), "bytes_per_sample": per_sample,
            "saved_bytes": saved * per_sample, "basis": basis}
    storage.write_json(pool.download_limit_record, info)
    log.info("downloading %s of %s URLs (the union of %s): %s URLs and about %.3g GB not fetched (%s)",
             f"{len(union):,}", f"{len(members):,}", ", ".join(subsets), f"{saved:,}", saved * per_sample / 1e9, basis)
    return info


def clear_download_limit(spec: BuildSpec) -> None:
    """A run that downloads all of the pool (or nothing) has no limit, whatever an earlier try wrote."""
    storage.remove(spec.pool.download_limit)
    storage.remove(spec.pool.download_limit_record)


def plan_published_download(spec: BuildSpec) -> list[dict]:
    """The run's download partitions: none for a run of the metadata alone; else the URL parts not downloaded
    yet and the URLs to try again, all of them or those of the run's download limit (write_download_limit)."""
    from dataclasses import asdict

    from ..download.plan import plan_download

    if spec.source.get("download", "all") == "none":
        return []
    only = spec.pool.download_limit if spec.source.get("download") == "subsets" else ""
    if only and not storage.exists(only):
        raise DatasetImportError(f"{only}: no download limit; the run's limit_download step writes it first")
    return [asdict(p) for p in plan_download(spec.pool, spec.platform_config, only, by_scale=False)]


# -- the run's summary ----------------------------------------------------------------------------------------


def summarize_published(spec: BuildSpec, seconds: float | None = None) -> dict[str, Any]:
    """What the run imported and downloaded, what the version holds, and the pool's decay."""
    pool = spec.pool
    scan = storage.read_json(spec.report)["stats"] if storage.exists(spec.report) else {"counters": {}}
    markers = storage.ls(storage.join(pool.markers, DOWNLOAD), "*")
    download = StageStats.total(DOWNLOAD, [StageStats.from_dict(storage.read_json(m)) for m in markers])
    published = storage.exists(pool.manifest)
    manifest = storage.read_json(pool.manifest) if published else {}
    return {
        "pool": spec.crawl_id, "pool_version": spec.pool_version, "scale": spec.source["scale"],
        "root": pool.root, "metadata": spec.source["metadata"], "scan": scan["counters"],
        "download_mode": spec.source.get("download", "all"),
        "limit": storage.read_json(pool.download_limit_record) if storage.exists(pool.download_limit_record) else None,
        "download": dict(download.counters), "published": published,
        "samples": manifest.get("samples"), "shards": len(manifest.get("shards", [])),
        # the report publish wrote (it reads every URL part and the ledger's history); computed only when unpublished
        "decay": storage.read_json(pool.decay_report) if published else published_decay(spec), "seconds": seconds,
    }


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def format_published_summary(summary: dict) -> str:
    from .decay import format_decay

    scan, download = summary["scan"], summary["download"]
    lines = [f"Import of DataComp's published pool {summary['pool']} (scale {summary['scale']}) into its pool "
             f"version {summary['pool_version']}, from {summary['metadata']}"]
    skipped = {k.split(":", 1)[1]: n for k, n in scan.items() if k.startswith("skipped:")}
    lines.append(f"  metadata: {scan.get('files_processed', 0)} new files ({scan.get('records', 0):,} rows, "
                 f"{scan.get('urls_written', 0):,} to download"
                 + (f"; skipped: {', '.join(f'{k} {n:,}' for k, n in skipped.items())}" if skipped else "")
                 + f"), {scan.get('files_already_imported', 0)} imported before"
                 + ("; features copied" if scan.get("npz_copied") else ""))
    limit = summary["limit"]
    if summary["download_mode"] == "none":
        lines.append("  download: none this run (the metadata alone, as download_upstream.py --skip_shards)")
    elif limit:
        lines.append(f"  download limited to the union of {', '.join(limit['labels'])}: {limit['urls']:,} of "
                     f"{limit['pool_urls']:,} URLs; {limit['saved_urls']:,} URLs and about "
                     f"{_size(limit['saved_bytes'])} not fetched (at {_size(limit['bytes_per_sample'])} per image, "
                     f"{limit['basis']})")
    if download.get("urls"):
        from ..download.partition import RULE_COUNTERS, format_rules

        statuses = {k: n for k, n in sorted(download.items()) if k not in ("urls", "attempted", *RULE_COUNTERS)}
        lines.append(f"  downloaded {download.get('attempted', 0):,} of {download['urls']:,} URLs: "
                     + ", ".join(f"{k} {n:,}" for k, n in statuses.items()))
        if format_rules(download):
            lines.append(f"  {format_rules(download)}")
    if summary["published"]:
        lines.append(f"  published {summary['pool_version']}: {summary['samples']:,} samples in the metadata, "
                     f"{summary['shards']} shards")
    else:
        lines.append(f"  {summary['pool_version']} adds nothing: not published")
    lines += format_decay(summary["decay"])
    lines.append(f"  filter it: datacomp filter --dataset {summary['pool']} --scale {summary['scale']}  "
                 f"(pool under {summary['root']})")
    if summary.get("seconds") is not None:
        lines.append(f"  {summary['seconds']:.0f} s")
    return "\n".join(lines)
