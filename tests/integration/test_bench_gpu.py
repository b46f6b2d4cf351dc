"""bench/gpu.py's CPU smoke run: the same code as on a GPU, with the tiny model, in seconds.

Timings are never asserted on (only that images were made and rates computed); the GPU run
itself cannot happen on the build machines.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from zengine.fast import ATTENTION_ORDER

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu.py"


def test_tiny_run_measures_both_paths_and_prints_the_table_last(
        zpipe_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "ZPIPE_CACHE": str(zpipe_cache)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())

    assert results["errors"] == []
    assert results["model"]["kind"] == "tiny" and results["model"]["bytes_on_disk"] > 0
    assert results["machine"]["device"] == "cpu"
    assert {"torch", "diffusers", "transformers", "device_name"} <= results["machine"].keys()
    size = results["settings"]["size"]

    plain = results["plain"]
    assert plain["images"] == results["settings"]["repeats"]
    assert plain["image_size"] == [size, size]
    assert plain["images_per_s"] > 0 and plain["load_s"] > 0
    assert len(plain["runs_s"]) == results["settings"]["repeats"]

    [fast] = results["fast"]  # --tiny: one variant, no torch.compile
    assert fast["compile_mode"] == "off"
    assert [r["batch"] for r in fast["runs"]] == [1, results["settings"]["batch"]]
    for run in fast["runs"]:
        assert run["images_per_s"] > 0 and run["image_size"] == [size, size]
    assert fast["images"] == results["settings"]["repeats"] * (1 + results["settings"]["batch"])
    # Every backend was tried and its outcome recorded; on a CPU only PyTorch's SDPA works.
    report = fast["fast_path"]
    assert list(report["attention_tried"]) == list(ATTENTION_ORDER)
    assert report["attention"] == "native" and report["attention_tried"]["native"].startswith("ok")
    assert not report["attention_tried"]["flash"].startswith("ok")
    assert report["compile_mode"] is None and report["channels_last_vae"] is True

    summary = results["summary"]
    assert summary["best_fast_mode"] == "off" and summary["best_fast_images_per_s"] > 0
    assert summary["speedup_vs_plain"] > 0
    assert "floor_s_per_image" not in summary  # the floor is the full model's

    # The table comes last on stdout.
    tail = [line for line in proc.stdout.splitlines() if line.strip()][-6:]
    assert any("images/s" in line for line in tail), proc.stdout[-2000:]
    assert any("plain pipeline" in line for line in tail)


def test_time_budget_skips_fast_variants_and_says_why(zpipe_cache: Path, tmp_path: Path,
                                                      capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "gpu.json"
    results = bench.main(["--tiny", "--budget-s", "0", "--repeats", "1", "--warmup", "0",
                          "--model-dir", str(zpipe_cache), "--out", str(out)])
    assert json.loads(out.read_text()) == results
    [fast] = results["fast"]
    assert fast["skipped"].startswith("time budget:") and "runs" not in fast
    assert results["plain"]["images"] == 1
    assert "off" in capsys.readouterr().out  # the skipped variant still has its table row
