"""DataComp's baseline code paths, restated for the benchmark: pandas, one Python call per row.

What ``baselines/apply_filter.py`` of mlfoundations/datacomp does per metadata
file, written here without its multiprocessing and downloads (the models are
passed in), so the benchmark times the same work on the same rows: pandas
reads, ``Series.apply`` of fastText/CLD3/WordNet per caption, uids converted
with ``int(uid, 16)`` per row, and numpy thresholds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

U16 = np.dtype("u8,u8")


def _uid_pairs(uids) -> np.ndarray:
    return np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], U16)


def _fasttext_lang(model, text: str) -> str:
    text = text.replace("\n", " ")
    labels, _ = model.predict(text)
    return labels[0].split("__label__")[1]


def no_filter(files: list[str]) -> np.ndarray:
    return np.concatenate([_uid_pairs(pd.read_parquet(f, columns=["uid"])["uid"].values) for f in files])


def clip_score(files: list[str], key: str, fraction: float) -> np.ndarray:
    scores = pd.concat([pd.read_parquet(f, columns=[key]) for f in files])
    n = int(len(scores) * fraction)
    threshold = -np.sort(-scores[key].values)[n]
    out = []
    for f in files:
        df = pd.read_parquet(f, columns=["uid", key])
        out.append(_uid_pairs(df[df[key] >= threshold]["uid"].values))
    return np.concatenate(out)


def basic_filter(files: list[str], model) -> np.ndarray:
    out = []
    for f in files:
        df = pd.read_parquet(f, columns=["uid", "text", "original_width", "original_height"])
        lang = df.text.apply(lambda x: _fasttext_lang(model, x))
        words = df.text.apply(lambda x: len(x.split()))
        chars = df.text.apply(len)
        uid_int = df.uid.apply(int, base=16)
        pairs = np.array(list(zip((uid_int // 2**64).astype("uint64"), (uid_int % 2**64).astype("uint64"))), U16)
        shorter = np.minimum(df.original_width, df.original_height)
        longer = np.maximum(df.original_width, df.original_height)
        mask = (lang == "en") & (words > 2) & (chars > 5) & (shorter >= 200) & (longer / shorter <= 3.0)
        out.append(pairs[mask.to_numpy()])
    return np.concatenate(out)


def laion2b(files: list[str], detector) -> np.ndarray:
    out = []
    for f in files:
        df = pd.read_parquet(f, columns=["uid", "text", "clip_b32_similarity_score"])
        lang = df.text.apply(lambda x: detector.FindLanguage(text=x.replace("\n", " ")).language)
        df = df[lang == "en"]
        out.append(_uid_pairs(df[df["clip_b32_similarity_score"] >= 0.28]["uid"].values))
    return np.concatenate(out)


def text_based(files: list[str], model, wordnet, entities: set[int]) -> np.ndarray:
    def contains(text: str) -> bool:
        for word in text.split():
            synsets = wordnet.synsets(word)
            if synsets and synsets[0].offset() in entities:
                return True
        return False

    out = []
    for f in files:
        df = pd.read_parquet(f, columns=["uid", "text"])
        lang = df.text.apply(lambda x: _fasttext_lang(model, x))
        hit = df.text.apply(contains)
        uid_int = df.uid.apply(int, base=16)
        pairs = np.array(list(zip((uid_int // 2**64).astype("uint64"), (uid_int % 2**64).astype("uint64"))), U16)
        out.append(pairs[((lang == "en") & hit).to_numpy()])
    return np.concatenate(out)
