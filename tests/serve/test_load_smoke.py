"""The load test (benchmarks/serve_load.py) in its smoke size: a real `ctrlab serve` process on a
loopback port, single-row requests at concurrency 1 and 32, 4096-row batches, single rows beside
large requests and 8 large requests at once, zero errors.
Latency and throughput targets are not checked here: they live in docs/performance.md."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_load_smoke_has_no_errors(frappe_export, tmp_path):
    _, artifact = frappe_export
    raw = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_load.py"), "--smoke", "--artifact",
                           str(artifact), "--json", str(raw), "--output", str(tmp_path / "perf.md"), "--repeats", "1"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(raw.read_text())
    by_name = {o["scenario"]: o for o in result["scenarios"]}
    assert set(by_name) == {"single row, c=1", "single row, c=32", "4096-row batches, records",
                            "4096-row batches, columns"}
    for o in by_name.values():
        assert o["ok"] == o["requests"] > 0 and o["errors"] == 0 and o["http_5xx"] == 0, o
        assert 0 < o["p50_ms"] <= o["p99_ms"]
    assert by_name["4096-row batches, records"]["rows_per_request"] == 4096
    assert {r["runtime"] for r in result["runtimes"]} == {"PyTorch eager", "ONNX Runtime",
                                                          "raw records -> Predictor (ONNX)"}
    # issue 14.23: the head-of-line and memory scenarios ran, without errors, and were reported
    avail = {o["scenario"]: o for o in result["availability"]}
    assert set(avail) == {"single rows during large requests", "large requests beside single rows",
                          "8 large requests at once"}
    for o in avail.values():
        assert o["ok"] == o["requests"] > 0 and o["errors"] == 0 and o["http_5xx"] == 0, o
    assert avail["8 large requests at once"]["rows_per_request"] == 8192
    assert 0 < result["memory"]["idle_mib"] <= result["memory"]["VmHWM"] and result["memory"]["bound_mib"] > 0
    text = (tmp_path / "perf.md").read_text()
    assert "single-row p99 ≤ 10 ms while large requests are scored" in text and "peak RSS within the bound" in text
    assert text.startswith("<!-- serve-load:begin -->") and "| single row, c=32 | 32 | 1 |" in text
