"""Evaluation sets kept in the Hugging Face ``datasets`` cache, read with pyarrow alone.

DataComp's ``download_evalsets.py`` fetches its retrieval sets (Flickr30k,
MSCOCO) and WinoGAViL with ``datasets.load_dataset("nlphuji/{name}",
split="test", cache_dir=f"{data_dir}/hf_cache")``, and its evaluators load
them the same way. That cache holds each split as Arrow stream files:

    {data_dir}/hf_cache/{owner}___{name}/{config}/{version}/{hash}/{name}-test.arrow
                                                                  /{name}-test-00000-of-00002.arrow ...

An image cell is ``datasets``' Image storage, a struct ``{bytes, path}``: the
encoded bytes, or a path to the file the dataset's loading script extracted
into the cache's ``downloads/extracted`` folder. Reading the files directly
keeps ``datasets`` (and its pins) out of the platform and works on any
fsspec storage.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

import pyarrow as pa

from . import storage

HF_CACHE = "hf_cache"


def dataset_dir(repo: str) -> str:
    """The cache folder of a hub dataset, relative to the evaluation data dir (``hf_cache/nlphuji___winogavil``)."""
    owner, _, name = repo.partition("/")
    return posixpath.join(HF_CACHE, f"{owner}___{name}")


def split_files(folder: str, split: str = "test") -> list[str]:
    """The Arrow files of `split` under a dataset's cache folder, in shard order; empty when not cached.

    Two cached builds (two hashes or versions) would be two datasets: that is an error naming both, not a guess.
    """
    name = folder.rstrip("/").rsplit("/", 1)[-1].partition("___")[2]
    if not name:
        raise ValueError(f"{folder}: not a datasets cache folder ({{owner}}___{{name}})")
    files = [f for f in storage.ls(folder, f"*/*/*/{name}-{split}*.arrow")
             if f.endswith(f"{name}-{split}.arrow") or f"{name}-{split}-" in f.rsplit("/", 1)[-1]]
    builds = sorted({f.rsplit("/", 1)[0] for f in files})
    if len(builds) > 1:
        raise storage.StorageError(f"{folder}: {len(builds)} cached builds of {name}/{split} "
                                   f"({', '.join(builds)}); keep one")
    return files


def read_table(files: list[str], columns: list[str] | None = None) -> pa.Table:
    """The split's rows (the named columns) from its Arrow stream files."""
    tables = []
    for url in files:
        with storage.open_file(url) as f:
            table = pa.ipc.open_stream(f).read_all()
        missing = set(columns or ()) - set(table.column_names)
        if missing:
            raise storage.StorageError(f"{url}: no column(s) {sorted(missing)} (has {table.column_names})")
        tables.append(table.select(columns) if columns else table)
    if not tables:
        raise FileNotFoundError("no Arrow files")
    return pa.concat_tables(tables)


def image_bytes(cell: dict, folder: str) -> bytes:
    """The encoded image of a ``{bytes, path}`` cell. A path that no longer exists (the cache was moved since
    the download) is looked up again under this cache's own ``downloads/`` folder."""
    if cell.get("bytes"):
        return cell["bytes"]
    path = cell.get("path")
    if not path:
        raise storage.StorageError(f"{folder}: an image cell with neither bytes nor path")
    if storage.exists(path):
        return storage.read_bytes(path)
    _, found, rest = path.partition("/downloads/")
    cache = folder.rstrip("/").rsplit("/", 1)[0]
    if found and storage.exists(storage.join(cache, "downloads", rest)):
        return storage.read_bytes(storage.join(cache, "downloads", rest))
    raise storage.StorageError(f"{folder}: image file {path} is gone (nor under {cache}/downloads)")


def cached_datasets(sets_dir: str) -> list[str]:
    """Every dataset folder in the evaluation data dir's Hugging Face cache that holds a test split."""
    return [d for d in storage.ls(storage.join(sets_dir, HF_CACHE), "*___*") if split_files(d)]


def iter_images(folder: str) -> Iterator[tuple[str, bytes]]:
    """(key, encoded image) for every image of a cached test split: ``{row}`` for an image column,
    ``{row}/{i}`` for each image of a list-of-images column (prefixed ``{column}:`` where there are several)."""
    table = read_table(split_files(folder))
    image_columns = [f.name for f in table.schema if _is_image(f.type)]
    for name in image_columns:
        prefix = f"{name}:" if len(image_columns) > 1 else ""
        listed = not pa.types.is_struct(table.schema.field(name).type)
        for row, cell in enumerate(table.column(name).to_pylist()):
            if cell is None:
                continue
            if listed:
                for i, item in enumerate(cell):
                    yield f"{prefix}{row}/{i}", image_bytes(item, folder)
            else:
                yield f"{prefix}{row}", image_bytes(cell, folder)


def _is_image(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        t = t.value_type
    return pa.types.is_struct(t) and {t.field(i).name for i in range(t.num_fields)} == {"bytes", "path"}
