"""Bring your own data: an external image-text dataset imported as a pool of its own.

A dataset named `name` lives under a storage root of its own,
``{storage_root}/datasets/{name}``, laid out as the CommonPool's (``crawls/``,
``pool/{version}/``, ``subsets/``): pool versions, ledger, per-scale pools and
Asset events are the CommonPool's, so every filtering baseline, the resharder
and training take it as they take the CommonPool.

Two kinds of source, each file read once: the dataset's
``crawls/{name}/wat_manifest.parquet`` records the files read, as it does WAT
files, so importing a folder again reads only its new files.

- ``urls``: parquet files with a URL and a caption column (LAION's, DataComp's
  or your own). The scan writes them as URL parts of the dataset
  (uid = md5(caption + url), deduplicated within the import and against
  earlier imports); the build's download, metadata pass and publish then run
  on them unchanged.
- ``webdataset``: tar shards with an image and a caption per sample
  (img2dataset's output, DataComp's shards, any webdataset). The scan lists
  each shard's samples in a staged part (the URL from the sample's json, or
  ``{shard}#{key}`` when it has none); one import task per staged part then
  writes them as raw shards in img2dataset's format, resized and encoded by
  img2dataset's own resizer with the download settings, with download-stage
  ledger rows, so the metadata pass takes them as if downloaded. A staged part
  enters ``urls/`` only together with its ledger rows: a sample is never in the
  URL parts without a status, and never downloaded.

Samples without a URL or a caption, or with no image, are counted skips of the
scan (as image links without alt text are in a WAT file); every sample that
enters ends in one ledger status.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import math
import posixpath
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core import ledger, storage
from ..core.config import ConfigError, PlatformConfig, load_config
from ..core.layout import (
    EXAMPLE_DATASET,
    CrawlLayout,
    PoolLayout,
    SyntheticWorld,
    check_name,
    committed_part,
    crawls_dir,
    dataset_root,
    partition_name,
)
from ..core.schema import URLS_SCHEMA, compute_uid
from ..core.shard_io import TarReadResult, image_bytes, iter_tar, sample_json
from ..core.stats import StageStats
from ..crawl.source_files import PROCESSED, FileRead, new_rows, plan_reads, read_manifest, write_manifest
from ..download.partition import STAGE as DOWNLOAD
from ..download.partition import Partition, classify_failure
from .build import BuildSpec

log = logging.getLogger(__name__)

STAGE = "scan"
KINDS = ("webdataset", "urls")
# Column names tried in this order when the import names none (LAION writes URL and TEXT).
URL_COLUMNS = ("url", "URL")
CAPTION_COLUMNS = ("caption", "text", "TEXT", "alt")
_STAGED_SCHEMA = URLS_SCHEMA.append(pa.field("source_key", pa.string()))


class DatasetImportError(ConfigError):
    """An import cannot run as asked; the message names the file or setting and what to do."""


def make_import_spec(run_key: str, name: str, sources: list[str], kind: str = "auto", url_column: str = "",
                     caption_column: str = "", pool_version: str = "",
                     overrides: Mapping[str, Any] | None = None, config_path: str | None = None) -> BuildSpec:
    """The import run's spec: a build spec whose storage root is the dataset's own.

    The config is `config_path`'s (else $DATACOMP_CONFIG's) with `overrides`; the
    dataset's name and pool version follow layout.NAME_PATTERN.
    """
    from ..core import versions
    from ..embedded.clip_models import stand_ins_dir

    base = load_config(config_path, overrides)
    from .models import check_thresholds_apply

    check_thresholds_apply(base)  # a threshold of a model that will not run is refused, not ignored
    sources = [s for s in (sources or []) if s and s.strip()]
    example = SyntheticWorld(base.crawl_source).example_dataset
    if not sources and not base.crawl.source and storage.exists(example):
        # the embedded default's empty form: the synthetic world's example dataset
        name, sources = name or EXAMPLE_DATASET, [example]
    if not name:
        raise DatasetImportError("name the dataset to import (name): its pool lives under {storage_root}/datasets/{name}")
    check_name("dataset name", name, DatasetImportError)
    if pool_version:
        check_name("pool version", pool_version, versions.VersionError)
    if not sources:
        raise DatasetImportError(f"dataset {name}: name the files or folders to import (sources)")
    if kind not in ("auto",) + KINDS:
        raise DatasetImportError(f"source kind {kind!r}: use auto, webdataset or urls")
    root = dataset_root(base.storage_root, name)
    # the models and evaluation sets stay the platform's, not the dataset root's
    config = load_config(config_path, dict(overrides or {}) | {
        "storage_root": root, "models.embedded_dir": stand_ins_dir(base),
        "evaluation.sets_dir": base.eval_sets_dir})
    storage.check_writable(root)
    files, kind = resolve_sources(sources, kind)
    version = versions.open_version(root, run_key, pool_version or "")
    safe_key = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_key)
    crawl = CrawlLayout(root, name)
    return BuildSpec(crawl_id=name, pool_version=version, inputs=files,
                     report=crawl.report(f"{safe_key}.json"), config=config.to_dict(),
                     source={"kind": kind, "url_column": url_column, "caption_column": caption_column})


def resolve_sources(sources: list[str], kind: str = "auto") -> tuple[list[str], str]:
    """(the files to import, their kind): folders and globs expanded to their .tar or .parquet files."""
    files: list[str] = []
    for item in sources:
        if any(c in item for c in "*?["):
            found = storage.ls(posixpath.dirname(item) or ".", posixpath.basename(item))
        elif item.endswith((".tar", ".parquet")):
            if not storage.exists(item):
                raise DatasetImportError(f"source {item} does not exist")
            found = [item]
        else:
            found = storage.ls(item, "*.tar") + storage.ls(item, "*.parquet")
        if not found:
            raise DatasetImportError(f"source {item}: no .tar (webdataset) or .parquet (url + caption) files there")
        files.extend(found)
    files = list(dict.fromkeys(files))
    kinds = {"webdataset" if f.endswith(".tar") else "urls" if f.endswith(".parquet") else "?" for f in files}
    if "?" in kinds:
        odd = next(f for f in files if not f.endswith((".tar", ".parquet")))
        raise DatasetImportError(f"source file {odd}: neither a webdataset .tar nor a .parquet of URLs and captions")
    if len(kinds) > 1:
        raise DatasetImportError(f"sources mix webdataset shards and URL parquet files ({files[0]}, ...): "
                           f"import them as two runs")
    found_kind = kinds.pop()
    if kind != "auto" and kind != found_kind:
        raise DatasetImportError(f"sources are {found_kind} files but the import says kind={kind}")
    return files, found_kind


# -- the scan: source files to URL parts (urls) or staged parts (webdataset) --------------------------------


def _known_uids(crawl: CrawlLayout) -> pa.Array:
    """Every uid an earlier import of the dataset holds: committed URL parts and staged ones."""
    parts = storage.ls(crawls_dir(crawl.root), "*/urls/part-*.parquet") + \
        storage.ls(crawls_dir(crawl.root), "*/staging/part-*.parquet")
    arrays = []
    for path in parts:
        with storage.open_file(path) as f:
            arrays.append(pq.read_table(f, columns=["uid"])["uid"].combine_chunks())
    return pa.concat_arrays(arrays) if arrays else pa.array([], pa.string())


def _pick_column(names: list[str], asked: str, tried: tuple[str, ...], what: str, path: str) -> str:
    if asked:
        if asked not in names:
            raise DatasetImportError(f"{path}: no {what} column {asked!r} (columns: {', '.join(names)})")
        return asked
    for name in tried:
        if name in names:
            return name
    raise DatasetImportError(f"{path}: no {what} column (tried {', '.join(tried)}; columns: {', '.join(names)}); "
                       f"name it with the import's {what}_column")


def _valid_pairs(urls: list, texts: list, config: PlatformConfig, counters: Counter,
                 http_only: bool = True) -> tuple[list, list]:
    """Pairs that may enter the pool; the others counted by reason (the extraction's rules)."""
    ex = config.extract
    keep_urls, keep_texts = [], []
    for url, text in zip(urls, texts):
        url = url.strip() if isinstance(url, str) else ""
        text = text.strip() if isinstance(text, str) else ""
        if not url:
            counters["skipped:no_url"] += 1
        elif not text:
            counters["skipped:no_caption"] += 1
        elif http_only and not url.startswith(("http://", "https://")):
            counters["skipped:not_http_url"] += 1
        elif len(url) > ex.max_url_length:
            counters["skipped:url_too_long"] += 1
        elif len(text) > ex.max_text_length:
            counters["skipped:text_too_long"] += 1
        else:
            keep_urls.append(url)
            keep_texts.append(text)
    return keep_urls, keep_texts


def _scan_url_table(path: str, spec: BuildSpec, config: PlatformConfig) -> tuple[pa.Table, Counter]:
    with storage.open_file(path) as f:
        names = pq.read_schema(f).names
        url_col = _pick_column(names, spec.source.get("url_column", ""), URL_COLUMNS, "url", path)
        text_col = _pick_column(names, spec.source.get("caption_column", ""), CAPTION_COLUMNS, "caption", path)
        f.seek(0)
        table = pq.read_table(f, columns=[url_col, text_col])
    counters = Counter(records=table.num_rows)
    urls, texts = _valid_pairs(table[url_col].to_pylist(), table[text_col].to_pylist(), config, counters)
    counters["pairs"] = len(urls)
    rows = pa.table({"uid": [compute_uid(t, u) for u, t in zip(urls, texts)], "url": urls, "text": texts,
                     "page_url": pa.nulls(len(urls), pa.string()), "wat_path": [path] * len(urls)},
                    schema=URLS_SCHEMA)
    return rows, counters


def _scan_shard(path: str, config: PlatformConfig) -> tuple[pa.Table, Counter, str | None]:
    """The samples of one webdataset shard that may enter: uid, url, caption, key."""
    read = TarReadResult()
    counters: Counter = Counter()
    urls, texts, keys = [], [], []
    for sample in iter_tar(path, read):
        counters["records"] += 1
        if image_bytes(sample) is None:
            counters["skipped:no_image"] += 1
            continue
        meta = sample_json(sample)
        raw = sample.get("txt")
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else meta.get("caption") or meta.get("text")
        url = meta.get("url")
        if not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            url = f"{path}#{sample['__key__']}"  # where the sample came from, in the url column's place
        ok_urls, ok_texts = _valid_pairs([url], [text], config, counters, http_only=False)
        if ok_urls:
            urls += ok_urls
            texts += ok_texts
            keys.append(sample["__key__"])
    counters["pairs"] = len(urls)
    rows = pa.table({"uid": [compute_uid(t, u) for u, t in zip(urls, texts)], "url": urls, "text": texts,
                     "page_url": pa.nulls(len(urls), pa.string()), "wat_path": [path] * len(urls),
                     "source_key": keys}, schema=_STAGED_SCHEMA)
    return rows, counters, read.error


def _first_of_each_uid(table: pa.Table) -> pa.Table:
    """One row per uid: its first occurrence (file order, then row order)."""
    if table.num_rows == 0:
        return table
    numbered = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    first = numbered.group_by("uid", use_threads=False).aggregate([("_row", "min")])["_row_min"]
    return table.take(pc.take(first, pc.sort_indices(first)))


def _write(url: str, table: pa.Table) -> None:
    with storage.atomic_write(url) as f:
        pq.write_table(table, f)


def run_scan(spec: BuildSpec) -> StageStats:
    """Stage entry point: read the source files no earlier import read, into URL or staged parts (the
    stats' outputs); the batch report (parts with their rows, files not read whole) goes to spec.report.

    Commit order as the extraction's: parts, then the manifest (the commit
    point), then the report. A committed report makes a rerun a no-op.
    """
    if storage.exists(spec.report):
        log.info("report %s exists: the scan already committed", spec.report)
        return StageStats.from_dict(storage.read_json(spec.report)["stats"])
    start = time.monotonic()
    config, crawl, kind = spec.platform_config, spec.crawl, spec.source["kind"]
    manifest = read_manifest(crawl)
    batch = max(manifest["batch"].to_pylist(), default=-1) + 1
    staging = crawl.staging
    for folder in (crawl.urls, staging):  # leftovers of a scan that never reached its manifest commit
        for part in storage.ls(folder, "part-*.parquet"):
            if int(part.rsplit("/", 1)[-1].split("-")[1]) >= batch:
                storage.remove(part)
    plan = plan_reads(manifest, spec.inputs)
    todo = plan.todo
    stats = StageStats(STAGE)
    stats.add("files_already_imported", plan.already_processed)
    stats.add("files_changed_read_again", plan.changed)
    report = {"kind": kind, "batch": None, "partitions": [], "unreadable": []}
    if not todo:
        log.info("dataset %s: all %d source files already imported", crawl.crawl_id, len(spec.inputs))
        storage.write_json(spec.report, report | {"stats": stats.to_dict()})
        return stats

    tables, reads = [], []
    for path in todo:
        error = None
        try:
            size, fingerprint = storage.fingerprint(path)
            if kind == "urls":
                table, counters = _scan_url_table(path, spec, config)
            else:
                table, counters, error = _scan_shard(path, config)
                if error and not counters["records"]:  # not a tar at all, or not readable now
                    raise OSError(error)
        except DatasetImportError:
            raise
        except (OSError, pa.ArrowException, ValueError) as exc:  # an unreadable file: tried again next import
            error = str(exc) if isinstance(exc, OSError) and not exc.errno else f"{type(exc).__name__}: {exc}"
            report["unreadable"].append({"wat_path": path, "error": f"{path}: {error}"})
            reads.append(FileRead(path, "unreadable", errors=1, error=error))
            stats.add("unreadable_files")
            log.warning("%s: %s; it stays unimported and the next import tries it again", path, error)
            continue
        if error:  # a shard that broke off: the samples before the break are imported, the file is done
            report["unreadable"].append({"wat_path": path, "error": f"{path}: broke off after "
                                                                    f"{counters['records']} samples: {error}"})
            stats.add("truncated_files")
        stats.counters.update(counters)
        tables.append(table)
        reads.append(FileRead(path, PROCESSED, counters["records"], counters["pairs"],
                              sum(n for k, n in counters.items() if k.startswith("skipped:")), error, size, fingerprint))
    stats.add("files_processed", sum(1 for r in reads if r.status == PROCESSED))

    found = pa.concat_tables(tables) if tables else _STAGED_SCHEMA.empty_table()
    unique = _first_of_each_uid(found)
    known = pc.is_in(unique["uid"], value_set=_known_uids(crawl))
    new = unique.filter(pc.invert(known))
    stats.add("duplicates_in_batch", found.num_rows - unique.num_rows)
    stats.add("already_known", unique.num_rows - new.num_rows)
    stats.add("urls_written", new.num_rows)

    parts = []
    if kind == "urls":  # parts of urls_per_partition URLs, sorted by uid, as the extraction writes them
        new = new.sort_by("uid")
        size = config.extract.urls_per_partition
        for i, offset in enumerate(range(0, new.num_rows, size)):
            path = storage.join(crawl.urls, f"part-{batch:04d}-{i:05d}.parquet")
            _write(path, new.slice(offset, size))
            parts.append({"path": path, "rows": min(size, new.num_rows - offset)})
    else:  # one staged part per source shard, its samples in the shard's order
        for i, path in enumerate(todo):
            rows = new.filter(pc.equal(new["wat_path"], path))
            if rows.num_rows:
                staged = storage.join(staging, f"part-{batch:04d}-{i:05d}.parquet")
                _write(staged, rows)
                parts.append({"path": staged, "rows": rows.num_rows})
    write_manifest(crawl, manifest, new_rows(reads, batch, plan, config.extract.max_read_attempts))
    stats.seconds = time.monotonic() - start
    stats.outputs = [p["path"] for p in parts]
    report |= {"batch": batch, "partitions": parts, "stats": stats.to_dict()}
    storage.write_json(spec.report, report)
    log.info("dataset %s batch %d: %s", crawl.crawl_id, batch, stats.to_dict()["counters"])
    return stats


# -- planning: downloads of URL tables, imports of staged shards ----------------------------------------------


def staged_parts(root: str) -> list[str]:
    return storage.ls(crawls_dir(root), "*/staging/part-*.parquet")


def plan_ingest(spec: BuildSpec) -> list[dict]:
    """The run's tasks: download partitions (URL tables, retries) and staged shards not imported yet.

    Each gets its own dense range of shard ids: the downloads first, then the
    imports, one range of ``download.number_sample_per_shard`` samples per shard.
    """
    from dataclasses import asdict

    from ..download.partition import next_free_shard
    from ..download.plan import committed_names, plan_download

    pool, config = spec.pool, spec.platform_config
    downloads = plan_download(pool, config)
    per_shard = config.download.number_sample_per_shard
    ends = [p.first_shard + max(1, math.ceil(p.rows / per_shard)) for p in downloads]
    nxt = max(ends) if ends else next_free_shard(pool)
    done = committed_names(pool.root)
    imports = []
    for path in staged_parts(pool.root):
        if partition_name(path) in done:
            continue
        with storage.open_file(path) as f:
            rows = pq.read_metadata(f).num_rows
        imports.append(Partition(path, rows, nxt))
        nxt += max(1, math.ceil(rows / per_shard))
    return [asdict(p) for p in downloads + imports]


def run_ingest(partition: Partition, spec: BuildSpec, last_try: bool = True) -> StageStats:
    """One task of an import run: a download partition, or a staged shard."""
    from ..download.partition import run_download

    if "/staging/" in partition.path:
        return run_import_shard(partition, spec.pool, spec.platform_config)
    return run_download(partition, spec.pool, spec.platform_config, last_try)


# -- a staged shard into raw shards in img2dataset's format ---------------------------------------------------


def _raw_schema(hash_name: str) -> pa.Schema:
    """The per-shard parquet img2dataset writes for our downloads (url, caption, uid, then its own columns)."""
    return pa.schema([("url", pa.string()), ("caption", pa.string()), ("uid", pa.string()), ("key", pa.string()),
                      ("status", pa.string()), ("error_message", pa.string()), ("width", pa.int32()),
                      ("height", pa.int32()), ("original_width", pa.int32()), ("original_height", pa.int32()),
                      ("exif", pa.string()), (hash_name, pa.string())])


def _resizer(config: PlatformConfig):
    from img2dataset.resizer import Resizer

    from ..download import image_decode

    image_decode.install()  # deep and rotated images as the download publishes them
    dl = config.download
    return Resizer(image_size=dl.image_size, resize_mode=dl.resize_mode,
                   resize_only_if_bigger=dl.resize_only_if_bigger, encode_quality=dl.encode_quality,
                   encode_format=dl.encode_format, max_image_area=dl.max_image_area)


def _resize_failure(message: str) -> str:
    """The ledger status of an image img2dataset's resizer refused: always final (there is nothing to fetch again)."""
    status = classify_failure(message, "failed_to_resize")
    return status if status in ("not_image", "image_too_large", "unsupported_image") else "resize_error"


def run_import_shard(partition: Partition, pool: PoolLayout, config: PlatformConfig) -> StageStats:
    """Write one staged part's samples as raw shards, with their download ledger rows and URL part.

    Commit order: raw shards, ledger part, URL part, marker. A rerun of a
    committed part returns the stats in its marker.
    """
    from img2dataset.downloader import compute_key
    from img2dataset.logger import CappedCounter, write_stats
    from img2dataset.writer import WebDatasetSampleWriter

    name = partition_name(partition.path)
    marker = pool.marker(DOWNLOAD, name)
    if storage.exists(marker):
        log.info("staged part %s already imported; nothing to do", name)
        return StageStats.from_dict(storage.read_json(marker))
    start, started_at = time.monotonic(), time.time()
    with storage.open_file(partition.path) as f:
        staged = pq.read_table(f)
    wanted = {k: i for i, k in enumerate(staged["source_key"].to_pylist())}
    rows = staged.to_pydict()
    source = rows["wat_path"][0]
    url_part = committed_part(partition.path)

    dl = config.download
    per_shard = dl.number_sample_per_shard
    oom_sample = math.ceil(math.log10(per_shard))
    tmp = storage.join(pool.base, "_tmp", f"import-{name}")
    storage.remove(tmp)
    storage.makedirs(tmp)
    resize = _resizer(config)
    schema = _raw_schema("sha256")
    statuses: dict[int, tuple[str, str | None]] = {}
    stats = StageStats(DOWNLOAD)
    shards: list[int] = []
    writer = None
    shard_counts: Counter = Counter()
    status_dict = CappedCounter()
    written = 0

    def resized(item):
        index, data = item
        out = resize(io.BytesIO(data))
        return index, out, hashlib.sha256(data).hexdigest()

    def close(shard_id: int) -> None:
        writer.close()
        write_stats(tmp, shard_id, shard_counts["count"], shard_counts["success"],
                    shard_counts["failed_to_download"], shard_counts["failed_to_resize"],
                    started_at, time.time(), status_dict, 8)

    def write(index: int, out: tuple, digest: str | None, status: str | None = None, why: str | None = None) -> None:
        nonlocal writer, written
        shard_id = partition.first_shard + written // per_shard
        if written % per_shard == 0:
            if writer is not None:
                close(shards[-1])
            writer = WebDatasetSampleWriter(shard_id, tmp, True, 8, schema, dl.encode_format)
            shards.append(shard_id)
            shard_counts.clear()
        img, width, height, ow, oh, err = out
        if status is None:  # img2dataset's resizer decided
            i2d_status = "success" if err is None else "failed_to_resize"
            status = "downloaded" if err is None else _resize_failure(err)
        else:
            i2d_status, err = "failed_to_download", why
        key = compute_key(written % per_shard, shard_id, oom_sample, 8)
        meta = {"url": rows["url"][index], "caption": rows["text"][index], "uid": rows["uid"][index], "key": key,
                "status": i2d_status, "error_message": err, "width": width, "height": height,
                "original_width": ow, "original_height": oh, "exif": None,
                "sha256": digest if i2d_status == "success" else None}
        writer.write(img if i2d_status == "success" else None, key, rows["text"][index], meta)
        shard_counts["count"] += 1
        shard_counts[i2d_status] += 1
        status_dict.increment("success" if err is None else err)
        statuses[index] = (status, err)
        written += 1

    read = TarReadResult()
    seen: set[str] = set()

    def samples():
        for sample in iter_tar(source, read):
            key = sample["__key__"]
            data = image_bytes(sample)
            if key in wanted and key not in seen and data is not None:
                seen.add(key)
                yield wanted[key], data

    # OpenCV releases the GIL; a bounded number of images in flight keeps memory flat
    with ThreadPoolExecutor(max(1, min(dl.thread_count, 8))) as threads:
        items = samples()
        while chunk := list(itertools.islice(items, 256)):
            for index, out, digest in threads.map(resized, chunk):
                write(index, out, digest)
    missing = [i for k, i in wanted.items() if k not in seen]
    why = f"{source} broke off after {read.samples} samples: {read.error}" if read.error else \
        f"{source} no longer holds this sample (changed since the import's scan)"
    for index in missing:
        write(index, (None,) * 6, None, "missing_from_source", why)
    if writer is not None:
        close(shards[-1])

    order = range(staged.num_rows)
    table = ledger.make_part(DOWNLOAD, rows["uid"], rows["url"], [statuses[i][0] for i in order],
                             [statuses[i][1] for i in order], [1] * staged.num_rows, url_part)
    ledger.check_accounts_for(table, rows["uid"], where=f"import of {partition.path}")
    for shard_id in shards:
        for suffix in (".tar", ".parquet", "_stats.json"):
            storage.move(storage.join(tmp, f"{shard_id:08d}{suffix}"),
                         storage.join(pool.downloads, f"{shard_id:08d}{suffix}"))
    ledger.write_part(pool.ledger_part(DOWNLOAD, name), table)
    _write(url_part, staged.drop_columns(["source_key"]))
    storage.remove(tmp)
    for status, _ in statuses.values():
        stats.add(status)
    stats.add("urls", staged.num_rows)
    stats.add("attempted", staged.num_rows)
    stats.seconds = time.monotonic() - start
    stats.outputs = [pool.download(s) for s in shards]
    storage.write_json(marker, stats.to_dict() | {"shards": shards, "partition": url_part, "imported_from": source})
    log.info("imported %s: %s", source, stats.to_dict()["counters"])
    return stats
