import pytest

from datacomp_ops import ledger


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
