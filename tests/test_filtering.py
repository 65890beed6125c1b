"""DataComp's baselines on metadata whose answer is known by hand: ties, empty captions, missing sizes, NaN scores."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datacomp_ops.core.config import ConfigError, load_config
from datacomp_ops.core.schema import SchemaError, read_subset, uids_to_array, write_subset
from datacomp_ops.filtering import language
from datacomp_ops.filtering.baselines import BaselineSpec, FilterContext, parse_all
from datacomp_ops.filtering.pool import MetadataPool, PoolError
from datacomp_ops.filtering.run import PoolSource, read_record, run_baseline

EN = "a photo of a red circle on the table"  # fastText and CLD3 both say English
FR = "une photo d'un chat noir sur la table"


def uid(i: int) -> str:
    return hashlib.md5(f"sample-{i}".encode()).hexdigest()


def write_pool(folder: Path, rows: list[dict], features: dict[str, np.ndarray] | None = None,
               files: int = 1) -> list[str]:
    """DataComp-format metadata: `rows` (uid added) split over `files` parquet files, each with its npz."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"uid": uid(i), **r} for i, r in enumerate(rows)]
    defaults = {"text": EN, "original_width": 400, "original_height": 300,
                "clip_b32_similarity_score": 0.3, "clip_l14_similarity_score": 0.3}
    rows = [defaults | r for r in rows]
    n = len(rows)
    features = features or {}
    features = {"b32_img": np.zeros((n, 4), np.float32), "l14_img": np.zeros((n, 4), np.float32)} | features
    bounds = np.linspace(0, n, files + 1).astype(int)
    for f in range(files):
        part = rows[bounds[f]:bounds[f + 1]]
        table = pa.table({
            "uid": [r["uid"] for r in part], "url": [f"http://x/{r['uid']}.jpg" for r in part],
            "text": pa.array([r["text"] for r in part], pa.string()),
            "original_width": pa.array([r["original_width"] for r in part], pa.int64()),
            "original_height": pa.array([r["original_height"] for r in part], pa.int64()),
            "clip_b32_similarity_score": pa.array([r["clip_b32_similarity_score"] for r in part], pa.float32()),
            "clip_l14_similarity_score": pa.array([r["clip_l14_similarity_score"] for r in part], pa.float32()),
        })
        pq.write_table(table, folder / f"{f:08d}.parquet")
        np.savez(folder / f"{f:08d}.npz", **{k: v[bounds[f]:bounds[f + 1]] for k, v in features.items()})
    return [r["uid"] for r in rows]


def select(folder: Path, spec: str, **ctx_kwargs) -> set[int]:
    """Row numbers the baseline keeps."""
    pool = MetadataPool.from_dir(str(folder))
    specs = parse_all([spec])
    (only,) = specs.values()
    mask = only.run(FilterContext(pool, **ctx_kwargs), specs).mask
    return set(np.flatnonzero(mask).tolist())


def test_basic_filter_by_hand(tmp_path):
    rows = [
        {},                                                   # 0 kept
        {"text": FR},                                         # 1 not English
        {"text": "red circle"},                               # 2 two words: needs more than 2
        {"text": "the dog runs in the park"},                 # 3 kept
        {"text": "a b c"},                                    # 4 three words but 5 characters: needs more than 5
        {"text": ""},                                         # 5 empty
        {"text": None},                                       # 6 null caption
        {"original_width": 200, "original_height": 600},      # 7 shorter side 200, aspect exactly 3: kept
        {"original_width": 199, "original_height": 400},      # 8 shorter side 199
        {"original_width": 200, "original_height": 601},      # 9 aspect above 3
        {"original_width": None, "original_height": 400},     # 10 size missing
        {"original_width": 0, "original_height": 0},          # 11 zero size
        {"text": "the  dog\truns\u3000in the park"},          # 12 any Unicode whitespace separates words: kept
    ]
    write_pool(tmp_path, rows)
    assert select(tmp_path, "basic_filter") == {0, 3, 7, 12}


def test_the_pools_language_index_gives_the_same_answers_and_is_rebuilt_for_other_rows(tmp_path, monkeypatch):
    """fastText runs once per pool for every baseline that asks; the flags are tied to the pool's rows and model."""
    from datacomp_ops.filtering import language
    from datacomp_ops.filtering.baselines import uses_fasttext

    rows = [{}, {"text": FR}, {"text": "the dog runs in the park"}, {"text": None}, {"text": "une table noire"}]
    write_pool(tmp_path / "pool", rows)
    without = {spec: select(tmp_path / "pool", spec) for spec in ("basic_filter", "basic_filter | clip_score:threshold=0.5")}
    assert without["basic_filter"] == {0, 2}
    index = str(tmp_path / "index")
    pool = MetadataPool.from_dir(str(tmp_path / "pool"))
    FilterContext(pool, index_dir=index).build_language_index()
    # an empty (or null) caption: fastText says English, as DataComp asks it; other conditions reject it
    assert np.load(tmp_path / "index" / "fasttext_en.npy").tolist() == [True, False, True, True, False]
    calls = []
    monkeypatch.setattr(language, "fasttext_english", lambda *a, **k: calls.append(a) or np.zeros(0, bool))
    for spec, rows_kept in without.items():
        assert select(tmp_path / "pool", spec, index_dir=index) == rows_kept
    assert calls == []  # read from the index, not predicted
    # another model, or other rows (a new file in the pool): the index is not used
    ctx = FilterContext(pool, fasttext_model=language.bundled_fasttext_model() + ".other", index_dir=index)
    ctx.fasttext_english(np.arange(2))
    write_pool(tmp_path / "pool", rows + [{}], files=2)
    ctx = FilterContext(MetadataPool.from_dir(str(tmp_path / "pool")), index_dir=index)
    ctx.fasttext_english(np.arange(2))
    assert len(calls) == 2
    specs = parse_all(["basic_filter", "clip_score", "mix = clip_score & basic_filter", "ref = mix | no_filter"])
    assert uses_fasttext(["ref"], specs) and not uses_fasttext(["clip_score", "no_filter"], specs)


def test_clip_score_threshold_and_fraction_with_ties_and_nan(tmp_path):
    scores = [0.3, 0.28, 0.28, float("nan"), 0.1]
    write_pool(tmp_path, [{"clip_l14_similarity_score": s, "clip_b32_similarity_score": 0.5 - s} for s in scores])
    assert select(tmp_path, "clip_score:arch=l14,threshold=0.28") == {0, 1, 2}  # NaN never passes
    # fraction: sort descending (NaN last), the value at int(N * f) is the threshold; its ties are kept
    assert select(tmp_path, "clip_score:arch=l14,fraction=0.4") == {0, 1, 2}  # index 2: 0.28
    assert select(tmp_path, "clip_score:arch=l14,fraction=0.2") == {0, 1, 2}  # index 1: 0.28
    assert select(tmp_path, "clip_score:arch=l14,fraction=0.0") == {0}        # index 0: 0.3
    assert select(tmp_path, "clip_score:arch=l14,fraction=0.6") == {0, 1, 2, 4}  # index 3: 0.1
    assert select(tmp_path, "clip_score:arch=l14,fraction=1.0") == {0, 1, 2, 4}
    assert select(tmp_path, "clip_score:arch=b32,threshold=0.21") == {1, 2, 4}  # 0.5 - s: 0.2, 0.22, 0.22, nan, 0.4
    with pytest.raises(ConfigError, match="a threshold or a fraction, not both"):
        select(tmp_path, "clip_score:arch=l14,threshold=0.2,fraction=0.3")
    with pytest.raises(ConfigError, match="use b32 or l14"):
        select(tmp_path, "clip_score:arch=h14,threshold=0.2")


def test_clip_score_compares_in_the_columns_precision(tmp_path):
    """float32 scores against a threshold as pandas compares them: in float32 (0.28 rounds up to 0.28000000119)."""
    write_pool(tmp_path, [{"clip_b32_similarity_score": float(np.float32(0.28))},
                          {"clip_b32_similarity_score": float(np.nextafter(np.float32(0.28), np.float32(0)))}])
    assert select(tmp_path, "clip_score:arch=b32,threshold=0.28") == {0}


def test_laion2b_is_cld3_english_and_b32_at_least_028(tmp_path):
    rows = [{"clip_b32_similarity_score": 0.28}, {"clip_b32_similarity_score": 0.27},
            {"text": FR, "clip_b32_similarity_score": 0.5}, {"text": "", "clip_b32_similarity_score": 0.5},
            {"text": "Stock photo of a beautiful sunset over the ocean", "clip_b32_similarity_score": 0.9},
            {"clip_b32_similarity_score": float("nan")}]
    write_pool(tmp_path, rows)
    assert select(tmp_path, "laion2b") == {0, 4}


def test_text_based_first_synset_is_an_imagenet21k_class(tmp_path):
    from datacomp_ops.filtering.text_entities import EntityMatcher
    from datacomp_ops.synthetic.wordnet import write_wordnet

    wn = write_wordnet(tmp_path / "wn")
    matcher = EntityMatcher(wn["wordnet_dir"], wn["imagenet21k_ids"])
    rows = [
        {"text": "a photo of a red circle on the table"},        # 0 circle: a class (noun sense first)
        {"text": "a photo of a red apple on the table"},         # 1 no word is a class (photo, red: not classes)
        {"text": "une photo d'un cercle rouge sur la table"},    # 2 not English
        {"text": "a picture showing circles on the table"},      # 3 circles -> circle (morphy), a class
        {"text": "a picture of the great plain at sunset"},      # 4 plain: its first synset is the noun, a class
        {"text": "the show must go on tonight"},                  # 5 show's first synset is a verb whose offset
                                                                  #   equals circle's: DataComp compares offsets only
        {"text": "a photo of a red circle."},                    # 6 "circle." is not a WordNet word (split keeps the dot)
        {"text": ""},                                            # 7
    ]
    write_pool(tmp_path / "pool", rows)
    assert select(tmp_path / "pool", "text_based", text_entities=lambda: matcher) == {0, 3, 4, 5}
    assert matcher.wordnet.synsets("show")[0].offset() == matcher.wordnet.synsets("circle")[0].offset()


def test_text_based_names_a_missing_wordnet(tmp_path):
    from datacomp_ops.filtering.text_entities import EntityMatcher

    with pytest.raises(ConfigError, match="filtering.wordnet_dir: .* is not a folder"):
        EntityMatcher(str(tmp_path / "nowhere"), "ids.txt")
    (tmp_path / "wn").mkdir()
    with pytest.raises(ConfigError, match="holds no index.noun"):
        EntityMatcher(str(tmp_path / "wn"), "ids.txt")


def _clusters(rng, centers, per, noise=0.05):
    pts = [c + noise * rng.standard_normal((per, len(c))) for c in centers]
    x = np.concatenate(pts).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_image_based_keeps_the_clusters_nearest_to_imagenet(tmp_path):
    rng = np.random.default_rng(0)
    centers = np.eye(8)[:4] * 3
    feats = _clusters(rng, centers, 10)  # rows 0-9 near e0, 10-19 e1, 20-29 e2, 30-39 e3
    rows = [{} for _ in range(40)]
    rows[5] = {"text": FR}        # fails the caption filter: never kept
    rows[25] = {"text": "ab\nc"}  # 3 fastText tokens (ab, </s>, c) but 4 characters: needs more than 5
    rows[35] = {"clip_l14_similarity_score": 0.9}
    write_pool(tmp_path, rows, {"l14_img": feats}, files=3)
    np.save(tmp_path / "centroids.npy", centers.astype(np.float32))  # the pool's centroids, as DataComp ships them
    targets = _clusters(rng, centers[[0, 2]], 5)  # "ImageNet" lies near e0 and e2
    given = f"centroids={tmp_path / 'centroids.npy'}"
    kept = select(tmp_path, f"image_based:{given}", image_targets=lambda dim: targets)
    assert kept == set(range(0, 10)) - {5} | set(range(20, 30)) - {25}
    # intersected with the CLIP score first: a threshold that keeps row 35 alone, which is not near a target
    assert select(tmp_path, f"image_based_intersect_clip_score:arch=l14,threshold=0.5,{given}",
                  image_targets=lambda dim: targets) == set()
    assert select(tmp_path, f"image_based_intersect_clip_score:arch=l14,threshold=0.2,{given}",
                  image_targets=lambda dim: targets) == kept
    with pytest.raises(PoolError, match="dimension 6, the pool's l14_img features 8"):
        select(tmp_path, f"image_based:{given}", image_targets=lambda dim: targets[:, :6])


def test_image_based_reads_centroids_written_as_datacomps_code_writes_them_and_runs_no_code(tmp_path):
    """DataComp's image_based_clustering.py saves its centroids with torch.save(numpy_array, path,
    pickle_protocol=4), which torch's weights-only loader refuses; apply_filter.py reads them back with
    torch.from_numpy(torch.load(path)). The same centroids as .npy and as such a file select the same rows;
    a file pickling anything but an array is refused, naming it, and none of its code runs."""
    import os

    import torch

    rng = np.random.default_rng(0)
    centers = (np.eye(8)[:4] * 3).astype(np.float32)
    write_pool(tmp_path, [{} for _ in range(40)], {"l14_img": _clusters(rng, centers, 10)})
    targets = _clusters(rng, centers[[1, 3]], 5)
    np.save(tmp_path / "centroids.npy", centers)
    torch.save(centers, tmp_path / "small_centroids.pt", pickle_protocol=4)  # DataComp's writer, verbatim
    assert torch.from_numpy(torch.load(tmp_path / "small_centroids.pt", weights_only=False)).shape == (4, 8)
    by_npy = select(tmp_path, f"image_based:centroids={tmp_path / 'centroids.npy'}", image_targets=lambda d: targets)
    by_pt = select(tmp_path, f"image_based:centroids={tmp_path / 'small_centroids.pt'}", image_targets=lambda d: targets)
    assert by_pt == by_npy == set(range(10, 20)) | set(range(30, 40))

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "ran"),))

    torch.save(Payload(), tmp_path / "evil.pt", pickle_protocol=4)
    with pytest.raises(PoolError, match=r"evil\.pt: .*it pickles posix\.mkdir.*none of its code was run"):
        select(tmp_path, f"image_based:centroids={tmp_path / 'evil.pt'}", image_targets=lambda d: targets)
    assert not (tmp_path / "ran").exists()


def test_image_based_clusters_the_caption_filtered_pool_with_faiss(tmp_path):
    """Without given centroids, k-means finds two well-separated groups; the one near ImageNet is kept."""
    rng = np.random.default_rng(3)
    centers = np.eye(8)[:2] * 3
    rows = [{} for _ in range(60)]
    rows[7] = {"text": ""}
    write_pool(tmp_path, rows, {"l14_img": _clusters(rng, centers, 30)}, files=2)
    targets = _clusters(rng, centers[[1]], 4)
    assert select(tmp_path, "image_based:clusters=2", image_targets=lambda dim: targets) == set(range(30, 60))
    assert select(tmp_path, "image_based:clusters=2", image_targets=lambda dim: _clusters(rng, centers[[0]], 4)) \
        == set(range(30)) - {7}


def test_random_is_an_exact_seeded_fraction(tmp_path):
    write_pool(tmp_path, [{} for _ in range(200)])
    a = select(tmp_path, "random:fraction=0.25")
    assert len(a) == 50 and a == select(tmp_path, "random:fraction=0.25")
    assert a != select(tmp_path, "random:fraction=0.25,seed=1")
    assert select(tmp_path, "random:fraction=0.1") < a  # nested: the same draw, a smaller cut


def test_compositions_and_spec_errors(tmp_path):
    write_pool(tmp_path, [{"clip_l14_similarity_score": s, "text": t}
                          for s, t in [(0.5, EN), (0.1, EN), (0.5, FR), (0.1, FR)]])
    entries = ["hi = clip_score:arch=l14,threshold=0.3", "both = hi & basic_filter", "either = hi | basic_filter"]
    specs = parse_all(entries)
    pool = MetadataPool.from_dir(str(tmp_path))
    got = {label: set(np.flatnonzero(s.run(FilterContext(pool), specs).mask)) for label, s in specs.items()}
    assert got == {"hi": {0, 2}, "both": {0}, "either": {0, 1, 2}}
    assert BaselineSpec.parse("clip_score:arch=l14,fraction=0.3").label == "clip_score-arch-l14-fraction-0.3"
    for bad, message in [
        (["nofilter"], "unknown baseline 'nofilter'"),
        (["clip_score:arch=l14,frac=0.3"], "no parameter 'frac'"),
        (["clip_score:l14"], "is not key=value"),
        (["x = a & b"], "'a' is neither a baseline nor a label"),
        (["a = b & no_filter", "b = a | no_filter"], "cycle"),
        (["x = no_filter & basic_filter | random"], "not both"),
        (["no_filter", "no_filter"], "used twice"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_all(bad)


def test_bad_pools_are_named(tmp_path):
    write_pool(tmp_path / "p", [{} for _ in range(4)], files=2)
    (tmp_path / "p" / "00000001.npz").unlink()
    with pytest.raises(PoolError, match=r"00000001.npz: missing"):
        MetadataPool.from_dir(str(tmp_path / "p")).features("l14_img")
    write_pool(tmp_path / "q", [{} for _ in range(4)], {"l14_img": np.zeros((4, 5), np.float32)})
    with pytest.raises(PoolError, match="l14_img features have dimension 5, expected 768"):
        MetadataPool(MetadataPool.from_dir(str(tmp_path / "q")).parquets, dims={"l14_img": 768}).features("l14_img")
    with pytest.raises(PoolError, match="no metadata parquet files"):
        MetadataPool.from_dir(str(tmp_path / "empty"))
    pq.write_table(pa.table({"uid": ["nothex" * 4 + "abcdefgh"]}), tmp_path / "q" / "00000009.parquet")
    with pytest.raises(SchemaError, match="is not 32 hex characters"):
        MetadataPool.from_dir(str(tmp_path / "q")).uids()


@pytest.mark.parametrize("problem", ["unsorted", "duplicated", "dtype"])
def test_a_bad_scale_subset_is_named(tmp_path, problem):
    uids = write_pool(tmp_path / "p", [{} for _ in range(4)])
    arr = uids_to_array(uids)
    path = tmp_path / "scale.npy"
    if problem == "unsorted":
        np.save(path, arr[::-1])
    elif problem == "duplicated":
        np.save(path, np.concatenate([arr[:2], arr[1:]]))
    else:
        np.save(path, np.arange(4, dtype=np.int64))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"pool_version": "v0001", "metadata": [str(tmp_path / "p" / "00000000.parquet")],
                                    "scales": {"tiny": {"path": str(path)}}}))
    expected = {"unsorted": "unsorted uids", "duplicated": "duplicated uid", "dtype": "dtype int64"}[problem]
    with pytest.raises(SchemaError, match=f"scale.npy: .*{expected}"):
        len(MetadataPool.from_manifest(str(manifest), "tiny"))


def test_run_baseline_writes_a_datacomp_subset_and_its_record(tmp_path):
    uids = write_pool(tmp_path / "p", [{"clip_l14_similarity_score": s} for s in (0.1, 0.5, 0.4, 0.2)], files=2)
    subset = tmp_path / "scale.npy"
    write_subset(str(subset), uids_to_array(uids[:3]))  # the scale holds rows 0-2
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"pool_version": "v0001", "metadata": sorted(str(p) for p in (tmp_path / "p").glob("*.parquet")),
                                    "scales": {"tiny": {"path": str(subset)}}}))
    config = load_config(overrides={"storage_root": str(tmp_path / "root"),
                                    "filtering.baselines": ["top = clip_score:arch=l14,fraction=0.5"]})
    source = PoolSource(manifest=str(manifest), scale="tiny")
    stats = run_baseline("top", source, config)
    out = str(tmp_path / "root" / "subsets" / "v0001" / "tiny")
    assert stats.outputs == [f"{out}/top.npy", f"{out}/top.json"] and stats["kept"] == 2
    record = read_record(out, "top")
    # over the scale's 3 rows: int(3 * 0.5) = 1 -> the second highest score (0.4) is the threshold
    assert record["kept"] == 2 and record["pool_samples"] == 3 and record["decided_with"]["threshold"] == pytest.approx(0.4)
    path = tmp_path / "root" / "subsets" / "v0001" / "tiny" / "top.npy"
    arr = np.load(path)  # as DataComp's resharder reads it
    assert arr.dtype == np.dtype("u8,u8") and arr.tolist() == sorted(uids_to_array([uids[1], uids[2]]).tolist())
    assert json.loads(path.with_suffix(".json").read_text())["fraction"] == pytest.approx(2 / 3)
    mtime = path.stat().st_mtime_ns
    assert run_baseline("top", source, config)["kept"] == 2 and path.stat().st_mtime_ns == mtime  # committed: no-op
    assert read_subset(str(path)).tolist() == arr.tolist()


def test_tokenisation_matches_fasttext_and_python():
    """fastText's token counts against the real fastText (recorded), Python's str.split against Python."""
    data = json.loads((Path(__file__).parent / "data" / "fasttext_tokenize.json").read_text())
    assert language.fasttext_token_counts(pa.array(data["texts"])).tolist() == data["counts"]
    rng = np.random.default_rng(1)
    chars = [" ", "\t", "\n", "\x0b", "\x1c", "\x85", "\xa0", "\u2028", "\u3000", "a", "é", "字", "\u200b"]
    texts = ["".join(rng.choice(chars, rng.integers(0, 12))) for _ in range(2000)]
    assert language.word_counts(pa.array(texts)).tolist() == [len(t.split()) for t in texts]
    assert language.split_words(pa.array(texts)).to_pylist() == [t.split() for t in texts]
    assert language.char_counts(pa.array(texts)).tolist() == [len(t) for t in texts]


@pytest.mark.slow
def test_filtering_dag_on_a_datacomp_metadata_folder(tmp_path):
    """`airflow dags test filtering_baselines` with a metadata folder from the form: one mapped task per
    baseline, subset files DataComp can read, and the stats records."""
    import subprocess

    from test_dags import airflow_env

    from datacomp_ops.synthetic.wordnet import write_wordnet

    rng = np.random.default_rng(5)
    n = 60
    texts = [EN, FR, "the dog runs in the park", "a picture showing circles on the table"] * (n // 4)
    scores = rng.uniform(0.1, 0.4, n).round(4)
    feats = _clusters(rng, np.eye(8)[:2] * 3, n // 2)
    uids = write_pool(tmp_path / "metadata", [{"text": t, "clip_b32_similarity_score": s, "clip_l14_similarity_score": s}
                                              for t, s in zip(texts, scores)], {"l14_img": feats}, files=3)
    wn = write_wordnet(tmp_path / "wn")
    np.save(tmp_path / "in1k.npy", _clusters(rng, np.eye(8)[:1] * 3, 5))
    home = tmp_path / "airflow"
    env = airflow_env(home, DATACOMP_STORAGE_ROOT=str(tmp_path / "root"))
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    conf = {"metadata_dir": str(tmp_path / "metadata"), "config_overrides": {
        "filtering.wordnet_dir": wn["wordnet_dir"], "filtering.imagenet21k_ids": wn["imagenet21k_ids"],
        "filtering.imagenet1k_embeddings": str(tmp_path / "in1k.npy")},
        "baselines": ["no_filter", "basic_filter", "text_based", "laion2b", "image_based:clusters=2",
                      "top = clip_score:arch=l14,fraction=0.25", "en_top = basic_filter & top"]}
    run = subprocess.run(["airflow", "dags", "test", "filtering_baselines", "-c", json.dumps(conf)],
                         env=env, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert "state=success" in out, out[-5000:]
    folder = tmp_path / "root" / "subsets" / "external" / "metadata"
    records = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert set(records) == {"no_filter", "basic_filter", "text_based", "laion2b", "image_based-clusters-2", "top",
                            "en_top"}
    kept = {label: set(np.load(folder / f"{label}.npy").tolist()) for label in records}
    as_pairs = {u: tuple(uids_to_array([u]).tolist()[0]) for u in uids}
    english = {as_pairs[u] for i, u in enumerate(uids) if i % 4 != 1}
    assert kept["no_filter"] == set(as_pairs.values())
    assert kept["basic_filter"] == english  # sizes 400 x 300 pass
    assert kept["text_based"] == {as_pairs[u] for i, u in enumerate(uids) if i % 4 in (0, 3)}  # circle(s)
    top = sorted(scores, reverse=True)[int(n * 0.25)]
    assert kept["top"] == {as_pairs[u] for u, s in zip(uids, scores) if np.float32(s) >= np.float32(top)}
    assert kept["en_top"] == kept["top"] & kept["basic_filter"]
    assert kept["image_based-clusters-2"] == {as_pairs[u] for i, u in enumerate(uids) if i < n // 2 and i % 4 != 1}
    assert records["top"]["kept"] == len(kept["top"]) and records["top"]["pool_samples"] == n
    assert "pool metadata" in out and "en_top" in out  # the summary table in the task log


def test_metaclip_matches_whole_words_case_sensitively_and_balances(tmp_path):
    from datacomp_ops.filtering import metaclip

    entries = tmp_path / "metadata.json"
    entries.write_text(json.dumps(["circle", "red circle", "dog", "New York"]))
    caps = ["a red circle.", "Circle", "circles", "dog,cat", "I love New York!", "new york", "a\tdog\nhere", None, ""]
    offsets, ids = metaclip.match(pa.array(caps), str(entries))
    got = [sorted(ids[offsets[i]:offsets[i + 1]].tolist()) for i in range(len(caps))]
    assert got == [[0, 1], [], [], [2], [3], [], [2], [], []]
    # t at or above every count: every matched sample is kept, unmatched ones never
    write_pool(tmp_path / "p", [{"text": c} for c in caps])
    assert select(tmp_path / "p", f"metaclip:t=10,entries={entries}") == {0, 3, 4, 6}

    # balancing: 2000 captions of a frequent entry and 40 of a rare one, t = 200
    rows = [{"text": "a dog"} for _ in range(2000)] + [{"text": "a red circle"} for _ in range(40)] \
        + [{"text": "a dog and a red circle"}]
    write_pool(tmp_path / "q", rows)
    kept = select(tmp_path / "q", f"metaclip:t=200,entries={entries}")
    dogs = len([i for i in kept if i < 2000])
    assert abs(dogs - 200) < 45  # p = 200 / 2001 each; a binomial around 200
    assert set(range(2000, 2041)) <= kept  # the rare entries (count 41 <= t) are always kept, whatever else matches
    assert kept == select(tmp_path / "q", f"metaclip:t=200,entries={entries}")  # the same draw on a rerun
    assert kept != select(tmp_path / "q", f"metaclip:t=200,entries={entries},seed=7")
    with pytest.raises(ConfigError, match="not a file of metadata entries"):
        select(tmp_path / "q", f"metaclip:t=200,entries={tmp_path / 'missing.json'}")


def test_semdedup_keeps_the_least_prototypical_of_each_duplicate_group(tmp_path):
    a = np.array([1.0, 0, 0])
    a_near = np.array([1.0, 0.02, 0])  # a's duplicate, leaning toward the cluster's centre
    b, c = np.array([0, 1.0, 0]), np.array([0, 0, 1.0])
    feats = np.stack([a, a_near, b, c, b * 0.5 + c * 0.5])
    write_pool(tmp_path, [{} for _ in feats], {"l14_img": feats.astype(np.float32)})
    # one cluster: a_near is closer to its centroid than a, so a stays and a_near goes
    assert select(tmp_path, "semdedup:epsilon=0.01,clusters=1") == {0, 2, 3, 4}
    # a looser epsilon makes b+c a duplicate of neither (cos 0.707): nothing more goes until 1 - eps < 0.707
    assert select(tmp_path, "semdedup:epsilon=0.25,clusters=1") == {0, 2, 3, 4}
    assert 4 not in select(tmp_path, "semdedup:epsilon=0.3,clusters=1")
    assert select(tmp_path, "semdedup:epsilon=0.0001,clusters=1") == {0, 1, 2, 3, 4}


def test_semdedup_removes_as_the_published_algorithm_does_and_keeps_the_kept_only_rule_by_name(tmp_path):
    """Hand-worked: four unit vectors 10 degrees apart in a plane, least prototypical first. At epsilon 0.05
    (threshold 0.95) neighbours are duplicates (cos 10 deg = 0.985), items two apart are not (cos 20 deg =
    0.940). SemDeDup's semdedup.py removes j when max_{i<j} cos(i, j) > 0.95, whether or not i was removed:
    items 1, 2, 3 all go. The kept-only rule lets removed items remove nothing: 1 goes (0 ~ 1), 2 stays
    (kept before it: 0, at 0.940), 3 goes (2 ~ 3)."""
    from datacomp_ops.filtering.semdedup import Clustered, semdedup_keep

    angles = np.radians([0, 10, 20, 30])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    cluster = Clustered(x, np.zeros(4, np.int64), x[:1], np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    assert semdedup_keep(cluster, 0.05).tolist() == [True, False, False, False]
    assert semdedup_keep(cluster, 0.05, "published").tolist() == [True, False, False, False]
    assert semdedup_keep(cluster, 0.05, "kept").tolist() == [True, False, True, False]
    # the same by the reference's own arithmetic: column maxima of the strict upper triangle of x x^T
    sims = x @ x.T
    assert (np.triu(sims, 1).max(axis=0) <= 0.95).tolist() == [True, False, False, False]
    # two clusters apart: each keeps its own first item; a singleton cluster keeps its item
    two = Clustered(np.concatenate([x, -x[:1]]), np.array([0, 0, 1, 1, 2]), x[:3],
                    np.array([0.1, 0.2, 0.1, 0.2, 1.0], np.float32))
    assert semdedup_keep(two, 0.05).tolist() == [True, False, True, False, True]
    # through the baseline, k-means choosing the order: with two more items at 60 and 70 degrees the centroid
    # lies at 31.7 degrees, so the order from the least prototypical is 70, 0, 60, 10, 20, 30; 60 goes (70 ~ 60),
    # and the chain 0, 10, 20, 30 goes as above. The published rule is the default, the kept-only rule a
    # named option.
    angles = np.radians([0, 10, 20, 30, 60, 70])
    pool = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    write_pool(tmp_path, [{} for _ in pool], {"l14_img": pool})
    assert select(tmp_path, "semdedup:epsilon=0.05,clusters=1") == {0, 5}
    assert select(tmp_path, "semdedup:epsilon=0.05,clusters=1,rule=kept") == {0, 2, 5}
    assert select(tmp_path, "dbp:fraction=1.0,epsilon=0.05,clusters=1") == {0, 5}
    assert select(tmp_path, "dbp:fraction=1.0,epsilon=0.05,clusters=1,rule=kept") == {0, 2, 5}
    with pytest.raises(ConfigError, match="semdedup: rule=all is not one of published, kept"):
        select(tmp_path, "semdedup:clusters=1,rule=all")


def test_dbp_gives_complex_clusters_more_and_keeps_their_least_prototypical_items(tmp_path):
    rng = np.random.default_rng(2)
    tight = _clusters(rng, [np.eye(8)[0] * 3], 40, noise=0.05)   # rows 0-39: a simple concept
    spread = _clusters(rng, [np.eye(8)[1] * 3], 40, noise=0.6)   # rows 40-79: a complex one
    write_pool(tmp_path, [{} for _ in range(80)], {"l14_img": np.concatenate([tight, spread])})
    kept = select(tmp_path, "dbp:fraction=0.5,tau=0.01,epsilon=0.0001,clusters=2")
    assert len(kept) == 40  # the target: half the pool
    in_tight = sorted(i for i in kept if i < 40)
    assert len(kept) - len(in_tight) > len(in_tight)  # the complex concept gets the larger share
    # within the tight cluster, the kept items are those farthest from its centre
    centre = tight.mean(0) / np.linalg.norm(tight.mean(0))
    far_first = list(np.argsort(tight @ centre))
    assert in_tight == sorted(far_first[:len(in_tight)])
    # a share beyond a cluster's size goes to the other: a tiny tau gives everything to the complex
    # cluster, which holds 40, the rest comes from the simple one
    assert len(select(tmp_path, "dbp:fraction=0.75,tau=0.0001,epsilon=0.0001,clusters=2")) == 60


def test_a_builds_events_are_filtered_smallest_scale_first():
    """The build announces its scales in any order; the tiny pool's subsets come first, so the training
    of the tiny scale starts before the larger pools are filtered (the demo lost ~15 s to small's)."""
    from datacomp_ops.filtering.plan import smallest_scale_first

    events = [{"scale": s, "pool_version": "v0001"} for s in ("small", "xlarge", "tiny", "medium", "custom", "large")]
    assert [e["scale"] for e in smallest_scale_first(events)] == ["tiny", "small", "medium", "large", "xlarge", "custom"]


def test_the_uid_hash_is_splitmix64s_finaliser():
    """Against splitmix64's finaliser written with Python's integers (the baselines' draws rest on it)."""
    import numpy as np

    from datacomp_ops.filtering.hashing import mix64, seed_salt

    def reference(z: int) -> int:
        mask = 2**64 - 1
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    values = [0, 1, 2**63, 2**64 - 1, 0x0123456789ABCDEF] + [int(v) for v in
                                                             np.random.default_rng(0).integers(0, 2**63, 20)]
    assert [int(h) for h in mix64(np.array(values, np.uint64))] == [reference(v) for v in values]
    assert int(seed_salt(1)) == 0x9E3779B97F4A7C15 and int(seed_salt(2)) == (2 * 0x9E3779B97F4A7C15) % 2**64
