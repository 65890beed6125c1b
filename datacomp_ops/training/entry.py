"""``python -m datacomp_ops.training.entry ARGS``: open_clip's training main, with the platform's model
configs (the tiny scale's ``datacomp-tiny``) registered first. torchrun starts one per GPU."""

from __future__ import annotations

import os
import sys


def _skip_end_of_shard_markers() -> None:
    """webdataset 0.2.100+ ends each shard's stream of files with an empty dict (its eof_value), which
    open_clip_train's group_by_keys_nothrow takes for a file and fails on ('fname'); drop the markers."""
    from open_clip_train import data

    group = data.group_by_keys_nothrow
    if getattr(group, "skips_markers", False):
        return

    def grouped(files, *args, **kwargs):
        return group((f for f in files if f), *args, **kwargs)

    grouped.skips_markers = True
    data.group_by_keys_nothrow = grouped


def main(argv: list[str]) -> int:
    import open_clip
    from open_clip_train.main import main as open_clip_main

    open_clip.add_model_config(os.environ.get("DATACOMP_MODEL_CONFIGS")
                               or os.path.join(os.path.dirname(__file__), "model_configs"))
    _skip_end_of_shard_markers()
    return open_clip_main(argv) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
