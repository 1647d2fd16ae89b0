"""The performance harness still works: a smoke run on a few hundred rows (ctrlab's worker always;
the FuxiCTR and DeepCTR-Torch workers too where the peers venv exists). Speed targets are not
checked here: they live in docs/performance.md, measured by `make bench-peers`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_harness_smoke_run(data_dir, tmp_path):
    out, raw = tmp_path / "perf.md", tmp_path / "perf.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "peers" / "bench_peers.py"), "--smoke",
                           "--work-dir", str(tmp_path / "work"), "--output", str(out), "--json", str(raw),
                           "--tasks", "preprocess", "train", "infer", "auc", "roofline"],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(raw.read_text())["results"]
    ours = {(r["task"], r["model"]): r for r in results if r["library"] == "ctrlab"}
    assert ours[("preprocess", None)]["rows"] == 600 and ours[("preprocess", None)]["rows_per_s"] > 0
    for model in ("DeepFM", "DCNv2", "FinalMLP"):
        assert ours[("train", model)]["samples_per_s"] > 0 and ours[("train", model)]["timed_rows"] == 2 * 64
        assert ours[("infer", model)]["single_row_ms_p99"] >= ours[("infer", model)]["single_row_ms_p50"] > 0
        assert 0.5 < ours[("auc", model)]["test_auc"] <= 1.0
    assert not [r for r in results if "error" in r]
    text = out.read_text()
    assert "| train | DeepFM | samples/s |" in text and "## Roofline" in text and "## Targets (issue 5)" in text


def test_report_keeps_the_serving_section(tmp_path):
    """Regenerating docs/performance.md keeps the section benchmarks/serve_load.py wrote into it."""
    sys.path.insert(0, str(REPO / "benchmarks" / "peers"))
    from bench_peers import write_report

    path = tmp_path / "performance.md"
    section = "<!-- serve-load:begin -->\n## Serving\n| a | b |\n<!-- serve-load:end -->"
    path.write_text("# old report\n\n" + section + "\n")
    write_report(path, "# new report\n")
    assert path.read_text() == "# new report\n\n" + section + "\n"
    write_report(tmp_path / "fresh.md", "# only\n")
    assert (tmp_path / "fresh.md").read_text() == "# only\n"
