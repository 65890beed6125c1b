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
    requeued = f"{layout.PoolLayout(root, 'v0003').requeue}/part-00001.parquet"
    assert layout.partition_name(requeued) == "requeue-part-00001"


def test_the_layout_refuses_what_is_not_its_path():
    with pytest.raises(ConfigError, match="not a subset file"):
        layout.parse_subset("/r/runs/v0001/tiny/no_filter.npy")
    with pytest.raises(ConfigError, match="not a run folder"):
        layout.parse_run_dir("/r/subsets/v0001/tiny/no_filter")
    # a dataset's name follows the names' rule, so a nested folder is no dataset root
    assert layout.parse_dataset_root("/r/datasets/a/b") == ("/r/datasets/a/b", "")


def test_the_configs_defaults_read_the_synthetic_world_where_datacomp_synthetic_writes_it(tmp_path):
    config = PlatformConfig(storage_root=str(tmp_path))
    world = layout.SyntheticWorld.under(config.storage_root)
    assert config.crawl_source == world.base == f"{tmp_path}/synthetic"
    assert config.eval_sets_dir == world.eval_sets
