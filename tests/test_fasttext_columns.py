"""The column-wise fastText reader gives fastText's own top label, on the shipped lid.176.ftz and on
models of the other layouts (dense, unpruned), and hands what it does not cover back to fastText."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pytest

from datacomp_ops.filtering import fasttext_columns, language

AWKWARD = [
    "", " ", "\t", "x", "hello world", "The quick brown fox jumps over the lazy dog", "  lead and trail  ",
    "Das ist ein Haus am See", "это тест на русском", "日本語のテキストです", "ça va très bien, merci",
    "Ελληνικά κείμενα", "مرحبا بالعالم", "한국어 문장입니다", "über die straße", "a" * 300, "😀😀 emoji party",
    "__label__en cat", "__label__fr", "__label__zz le chat", "a\tb\x0bc\x0cd\re\x00f g", "nul\x00inside",
    "\x1cfile\x1dseparators\x1e are not\x1f blanks", "non\xa0breaking\u2003spaces\u3000here",
    "http://example.com/a/b?c=d&e=f#frag", "IMG_2034.JPG", "1234 5678", "!!! ??? ...", "<>", "< >",
    "Wi-Fi e-mail co-operate", "naïve café résumé", "Z\u0301algo\u0308 combining marks", "\u200bzero\u200bwidth",
    "mixed English und Deutsch et français y español", "🇩🇪 flag 🏳️‍🌈 zwj", "\ud7ff\ue000 private use",
]
WORDS = ["the", "dog", "runs", "in", "park", "der", "Hund", "läuft", "le", "chien", "court", "el", "perro",
         "corre", "собака", "бежит", "犬", "走る", "كلب", "σκύλος", "beach", "sunset", "vintage", "stock", "photo",
         "de", "la", "und", "und", "IMG", "2019", "©", "-", "|", "a", "i", "über", "Straße", "naïve"]


def corpus(n: int = 4000, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out = list(AWKWARD)
    for _ in range(n):
        words = rng.choice(WORDS, rng.integers(0, 12))
        out.append(" ".join(words) if rng.random() < 0.8 else "  ".join(words).upper())
    return out


def reference(path: str, texts: list[str]) -> np.ndarray:
    """fastText's own answer, one caption at a time (newlines as spaces, as DataComp does)."""
    return np.asarray(language._fasttext_chunk(path, [t.replace("\n", " ") + "\n" for t in texts]), dtype=object)


def test_the_shipped_model_gives_fasttexts_labels():
    path = language.bundled_fasttext_model()
    texts = corpus()
    labels, certain = fasttext_columns.load(path).top_labels(pa.array([t.replace("\n", " ") for t in texts]))
    expected = reference(path, texts)
    wrong = [(t, a, b) for t, a, b, c in zip(texts, labels, expected, certain) if c and a != b]
    assert not wrong
    assert certain.mean() > 0.95  # the reader decides nearly all by itself
    assert (language.fasttext_languages(pa.array(texts)) == expected).all()  # with fastText for the rest
    assert set(expected) > {"en", "de", "fr", "es", "ru", "ja", "ar", "el", "ko"}


def test_near_ties_are_left_to_fasttext(monkeypatch):
    path = language.bundled_fasttext_model()
    texts = AWKWARD
    monkeypatch.setattr(fasttext_columns, "MARGIN", 1e9)
    _, certain = fasttext_columns.load(path).top_labels(pa.array(texts))
    assert not certain.any()
    assert (language.fasttext_languages(pa.array(texts)) == reference(path, texts)).all()


def test_many_rows_are_cut_into_pieces(monkeypatch):
    monkeypatch.setattr(language, "BLOCK", 700)
    monkeypatch.setattr(language, "PARALLEL_MIN", 1000)
    texts = corpus(3000, seed=3)
    assert (language.fasttext_languages(pa.array(texts)) == reference(language.bundled_fasttext_model(),
                                                                      texts)).all()


def _model_parts(path: str) -> dict:
    """The shipped model's header, dictionary and dequantized matrices, to write variants of it."""
    model = fasttext_columns.FastTextColumns(path)
    with open(path, "rb") as f:
        data = f.read()
    r = fasttext_columns._Reader(data)
    r.read("ii")
    args = list(r.read("12i")) + [r.read("d")]
    size, nwords, nlabels = r.read("iii")
    ntokens, prune_size = r.read("qq")
    entries = []
    for _ in range(size):
        word = r.cstring()
        entries.append((word, *r.read("qb")))
    pairs = r.array("<i4", 2 * max(prune_size, 0)).reshape(-1, 2)
    return {"args": args, "entries": entries, "nwords": nwords, "nlabels": nlabels, "ntokens": ntokens,
            "pairs": pairs, "input": model.input, "output": model.output}


def _write_model(path, parts: dict, *, loss: int | None = None, bucket: int | None = None,
                 pairs: np.ndarray | None = None, prune_size: int | None = None, input=None) -> str:
    """A fastText .bin (format 12) with dense matrices: what `fasttext.train_supervised(...).save_model` writes."""
    args = list(parts["args"])
    if loss is not None:
        args[6] = loss
    if bucket is not None:
        args[8] = bucket
    pairs = parts["pairs"] if pairs is None else pairs
    prune_size = len(pairs) if prune_size is None else prune_size
    matrix = parts["input"] if input is None else input
    out = [struct.pack("<ii", fasttext_columns.FASTTEXT_MAGIC, 12), struct.pack("<12id", *args),
           struct.pack("<iiiqq", len(parts["entries"]), parts["nwords"], parts["nlabels"], parts["ntokens"],
                       prune_size)]
    out += [w + b"\0" + struct.pack("<qb", c, t) for w, c, t in parts["entries"]]
    out.append(np.ascontiguousarray(pairs, "<i4").tobytes())
    for m in (matrix, parts["output"]):
        out += [struct.pack("<?qq", False, *m.shape), np.ascontiguousarray(m, "<f4").tobytes()]
    path.write_bytes(b"".join(out))
    return str(path)


def _unpruned_model(path, bucket: int = 997, **kw) -> str:
    parts = _model_parts(language.bundled_fasttext_model())
    rng = np.random.default_rng(0)
    rows = np.concatenate([parts["input"][: parts["nwords"]],
                           rng.standard_normal((bucket, parts["input"].shape[1])).astype(np.float32)])
    return _write_model(path, parts, bucket=bucket, pairs=np.zeros((0, 2)), prune_size=-1, input=rows, **kw)


def test_a_dense_unpruned_model_gives_fasttexts_labels(tmp_path):
    """lid.176.bin (DataComp's model) is dense and unpruned: every n-gram hash has a row of its own (fastText
    refuses a dense pruned one). Here: the shipped model's words and a small random bucket."""
    texts = corpus(1500, seed=1)
    unpruned = _unpruned_model(tmp_path / "unpruned.bin")
    labels, certain = fasttext_columns.FastTextColumns(unpruned).top_labels(pa.array(texts))
    expected = reference(unpruned, texts)
    assert certain.mean() > 0.9 and (labels[certain] == expected[certain]).all()
    assert (language.fasttext_languages(pa.array(texts), unpruned) == expected).all()


def test_a_model_outside_the_reader_is_predicted_by_fasttext(tmp_path):
    softmax = _unpruned_model(tmp_path / "softmax.bin", loss=3)
    with pytest.raises(fasttext_columns.UnsupportedModel, match="hierarchical-softmax"):
        fasttext_columns.FastTextColumns(softmax)
    texts = corpus(300, seed=2)
    assert (language.fasttext_languages(pa.array(texts), softmax) == reference(softmax, texts)).all()
    not_a_model = tmp_path / "junk.bin"
    not_a_model.write_bytes(b"\0" * 64)
    with pytest.raises(fasttext_columns.UnsupportedModel, match="not a fastText model"):
        fasttext_columns.FastTextColumns(str(not_a_model))
