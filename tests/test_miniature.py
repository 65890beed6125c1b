"""The miniature ranks filters as DataComp's Table 3 does: CLIP score above no filtering, one seed."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_clip_score_beats_no_filtering_on_the_miniature(tmp_path, embedded_models):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    # the bench's own pipeline: the synthetic crawl, the build, the filters, the tiny recipe on the pool's
    # 5,000 samples seen, the synthetic suite (benchmarks/bench_miniature.py runs all five over 3 seeds)
    out = tmp_path / "miniature.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_miniature.py"), "--root", str(tmp_path / "root"),
         "--seeds", "0", "--baselines", "no_filter,clip_score_l14_30", "--port", str(free_port),
         "--json", str(out)], capture_output=True, text=True, timeout=1800)
    assert out.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    summary = figures["summary"]
    assert figures["samples_seen"] == 5000 and figures["pool"] == 5000
    assert 1500 <= summary["clip_score_l14_30"]["size"] <= 1510  # DataComp's 30%, and the ties at its threshold
    assert result.returncode == 0, result.stdout[-3000:]
    assert summary["clip_score_l14_30"]["average"] > summary["no_filter"]["average"], result.stdout
