"""core/layout.py: every path on storage, and a parse function that inverts each one the code reads back."""

from __future__ import annotations

import pytest

from datacomp_ops.core import layout
from datacomp_ops.core.config import ConfigError, PlatformConfig


@pytest.mark.parametrize("root", ["/data/root", "s3://bucket/root", "relative/root"])
def test_each_parse_function_inverts_its_path(root):
    subsets = layout.SubsetsLayout(root, "v0002", "small")
    assert subsets.subset("clip_score_l14_30") == f"{root}/subsets/v0002/small/clip_score_l14_30.npy"
    assert layout.parse_subset(subsets.subset("clip_score_l14_30")) == ("v0002", "small", "clip_score_l14_30")
    imported = layout.dataset_root(root, "cc3m")
    assert imported == f"{root}/datasets/cc3m"
    assert layout.parse_dataset_root(imported) == (root, "cc3m")
    assert layout.parse_dataset_root(imported + "/") == (root, "cc3m")
    assert layout.parse_dataset_root(root) == (root, "")
    run = layout.run_dir(imported, "v0001", "tiny", "basic_filter", 2)
    place = layout.parse_run_dir(run)
    assert (layout.parse_dataset_root(place.root)[1], place.pool_version, place.baseline, place.seed) == (
        "cc3m", "v0001", "basic_filter", 2)
    part = f"{layout.CrawlLayout(root, 'CC-MAIN-2024-10').urls}/part-00007.parquet"
    assert layout.crawl_of_url_part(part) == "CC-MAIN-2024-10"
    assert layout.partition_name(part) == "CC-MAIN-2024-10-part-00007"
    assert layout.crawl_of_url_part(f"{root}/elsewhere/urls/part-1.parquet") == ""
    staged = f"{layout.CrawlLayout(root, 'mine').staging}/part-00002.parquet"
    assert layout.committed_part(staged) == f"{layout.CrawlLayout(root, 'mine').urls}/part-00002.parquet"
    assert layout.partition_name(staged) == layout.partition_name(layout.committed_part(staged)) == "mine-part-00002"
    requeued = f"{layout.PoolLayout(root, 'v0003').requeue}/part-00001.parquet"
    assert layout.partition_name(requeued) == "requeue-part-00001"


def test_the_layout_refuses_what_is_not_its_path():
    with pytest.raises(ConfigError, match="not a subset file"):
        layout.parse_subset("/r/runs/v0001/tiny/no_filter.npy")
    with pytest.raises(ConfigError, match="not a staged part"):
        layout.committed_part("/r/crawls/mine/urls/part-1.parquet")
    with pytest.raises(ConfigError, match="not a run folder"):
        layout.parse_run_dir("/r/subsets/v0001/tiny/no_filter")
    # a dataset's name follows the names' rule, so a nested folder is no dataset root
    assert layout.parse_dataset_root("/r/datasets/a/b") == ("/r/datasets/a/b", "")


def test_the_configs_defaults_read_the_synthetic_world_where_datacomp_synthetic_writes_it(tmp_path):
    config = PlatformConfig(storage_root=str(tmp_path))
    world = layout.SyntheticWorld.under(config.storage_root)
    assert config.crawl_source == world.base == f"{tmp_path}/synthetic"
    assert config.eval_sets_dir == world.eval_sets


def test_the_storage_layout_is_the_one_pools_were_built_with():
    """Pools built before the library moved into packages by phase keep working: every path is the
    one DESIGN.md's "Data on storage" lists and the earlier code wrote (the same strings, literally)."""
    r = "/r"
    pool, crawl = layout.PoolLayout(r, "v0002"), layout.CrawlLayout(r, "CC-MAIN-2024-10")
    got = [crawl.wat_manifest, crawl.urls, crawl.report("k.json"), crawl.staging,
           pool.downloads, pool.download(3), pool.shard(3), pool.shard(3, "parquet"), pool.metadata_file(3),
           pool.metadata_file(3, "npz"), pool.manifest, pool.ledger_part("download", "p"), pool.marker("metadata", "m"),
           pool.scale("small"), pool.report("k.json"), pool.requeue,
           layout.SubsetsLayout(r, "v0002", "small").subset("basic_filter"),
           layout.SubsetsLayout(r, "v0002", "small").record("basic_filter"), layout.external_subsets(r, "meta"),
           layout.run_dir(r, "v0002", "small", "basic_filter"), layout.run_dir(r, "v0002", "small", "basic_filter", 2),
           layout.leaderboard_dir(r), layout.eval_index_dir(r, "isc-0123"), layout.dataset_root(r, "cc3m"),
           layout.version_lease(r, "v0002"), layout.run_claims_dir(r), layout.SyntheticWorld.under(r).eval_sets,
           layout.SyntheticWorld.under(r).wordnet_db, layout.SyntheticWorld.under(r).example_dataset]
    assert got == [
        "/r/crawls/CC-MAIN-2024-10/wat_manifest.parquet", "/r/crawls/CC-MAIN-2024-10/urls",
        "/r/crawls/CC-MAIN-2024-10/reports/k.json", "/r/crawls/CC-MAIN-2024-10/staging",
        "/r/pool/v0002/downloads", "/r/pool/v0002/downloads/00000003.tar", "/r/pool/v0002/shards/00000003.tar",
        "/r/pool/v0002/shards/00000003.parquet", "/r/pool/v0002/metadata/00000003.parquet",
        "/r/pool/v0002/metadata/00000003.npz", "/r/pool/v0002/manifest.json", "/r/pool/v0002/ledger/download/p.parquet",
        "/r/pool/v0002/_markers/metadata/m", "/r/pool/v0002/scales/small.npy", "/r/pool/v0002/reports/k.json",
        "/r/pool/v0002/requeue",
        "/r/subsets/v0002/small/basic_filter.npy", "/r/subsets/v0002/small/basic_filter.json",
        "/r/subsets/external/meta",
        "/r/runs/v0002/small/basic_filter", "/r/runs/v0002/small/basic_filter+seed2",
        "/r/leaderboard", "/r/eval_index/isc-0123", "/r/datasets/cc3m",
        "/r/pool/_leases/v0002.json", "/r/pool/_runs", "/r/synthetic/eval",
        "/r/synthetic/wordnet/wordnet", "/r/synthetic/own_data"]
