import pyarrow.compute as pc
import pytest

from datacomp_ops.core import ledger


def _part(uids, statuses):
    return ledger.make_part("download", uids, [f"http://x/{u}" for u in uids], statuses,
                            [None if s == "downloaded" else "HTTP Error 404: Not Found" for s in statuses])


def test_ledger_accounts_for_every_input(tmp_path):
    table = _part(["a", "b", "c"], ["downloaded", "http_error", "downloaded"])
    ledger.check_accounts_for(table, ["c", "b", "a"], "t")
    ledger.write_part(str(tmp_path / "download" / "p0.parquet"), table)
    ledger.write_part(str(tmp_path / "download" / "p1.parquet"), _part(["d"], ["timeout"]))
    final = ledger.final_statuses(str(tmp_path))
    assert final.num_rows == 4
    assert ledger.counts(final) == {"downloaded": 2, "http_error": 1, "timeout": 1}


def test_ledger_invariant_failures_are_explained():
    table = _part(["a", "a", "x"], ["downloaded"] * 3)
    with pytest.raises(ledger.LedgerError, match=r"2 inputs, 3 rows; 1 missing, 1 unknown, 1 twice; e.g. missing b"):
        ledger.check_accounts_for(table, ["a", "b"], "t")


def test_empty_ledger(tmp_path):
    assert ledger.final_statuses(str(tmp_path)).num_rows == 0


def test_current_status_is_the_newest_version_then_stage_then_attempt(tmp_path):
    """Two runs of one open version can download a URL twice: its later attempt is the current status."""
    v1, v2 = tmp_path / "v0001" / "ledger", tmp_path / "v0002" / "ledger"
    ledger.write_part(f"{v1}/download/a.parquet", ledger.make_part(
        "download", ["a", "b"], ["u", "u"], ["timeout", "downloaded"], [None, None], [1, 1]))
    ledger.write_part(f"{v1}/metadata/a.parquet", ledger.make_part("metadata", ["b"], ["u"], ["kept"], [None]))
    # v0002 stays open over two runs: a times out again (attempt 2), then downloads (attempt 3)
    ledger.write_part(f"{v2}/download/run2.parquet", ledger.make_part(
        "download", ["a"], ["u"], ["downloaded"], [None], [3]))
    ledger.write_part(f"{v2}/download/run1.parquet", ledger.make_part(
        "download", ["a"], ["u"], ["timeout"], [None], [2]))
    ledger.write_part(f"{v2}/metadata/a.parquet", ledger.make_part("metadata", ["a"], ["u"], ["nsfw_text"], [None]))

    dirs = [str(v1), str(v2)]
    history = ledger.history(dirs)
    assert ledger.attempts(history) == {"a": 3, "b": 1}
    current = {r["uid"]: (r["status"], r["version"]) for r in ledger.latest(history).to_pylist()}
    assert current == {"a": ("nsfw_text", "v0002"), "b": ("kept", "v0001")}
    # before the metadata pass, the newest download attempt decides
    only_download = history.filter(pc.equal(history["stage"], "download"))
    assert {r["uid"]: r["status"] for r in ledger.latest(only_download).to_pylist()} == {
        "a": "downloaded", "b": "downloaded"}


def test_naming_a_published_or_bad_pool_version_is_refused(tmp_path):
    """A published version stays as it is; an open one must be finished first; names are checked."""
    import pytest

    from datacomp_ops.core import storage, versions
    from datacomp_ops.core.layout import PoolLayout

    root = str(tmp_path)
    assert versions.open_version(root, "run-1") == "v0001"
    assert versions.open_version(root, "run-1") == "v0001"  # a retried run keeps its version
    with pytest.raises(versions.VersionError, match="'v0001' is still open"):
        versions.open_version(root, "run-2", "v0002")
    storage.write_json(PoolLayout(root, "v0001").manifest, {"version": "v0001"})  # published
    with pytest.raises(versions.VersionError, match="'v0001' is published and stays as it is"):
        versions.open_version(root, "run-2", "v0001")
    with pytest.raises(versions.VersionError, match="use letters, digits"):
        versions.open_version(root, "run-2", "v 1!")
    assert versions.open_version(root, "run-2") == "v0002"
