"""bench/gpu.py, the one-process GPU proof, run on the CPU: the tiny model through every stage,
the budget, the per-stage isolation, the atomic JSON and the watchdog.

Timings are never asserted on (only that they were measured); the GPU run itself happens only on
a lent device (bench/gpu_device.sh), its CPU rehearsal in tests/integration/test_gpu_rehearsal.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from zengine.fast import ATTENTION_ORDER

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_goes_through_every_stage_and_prints_the_table_last(
        zpipe_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "ZPIPE_CACHE": str(zpipe_cache)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out),
                           "--model-dir", str(tmp_path / "models")],
                          capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    stages = results["stages"]
    assert results["errors"] == []
    assert not (tmp_path / "gpu.json.tmp").exists()  # written atomically, the temporary renamed

    # Every stage ran, except the CUDA-only fp8, which says why.
    for name in ("versions", "build", "cold_start", "plain_b1", "plain_b4", "memory",
                 "fast_eager", "compile"):
        assert stages[name]["status"] == "ok", (name, stages[name])
    assert stages["fp8"]["status"] == "skipped" and "CUDA" in stages["fp8"]["reason"]

    versions = stages["versions"]
    assert {"diffusers", "transformers", "huggingface-hub", "torchao"} <= versions["packages"].keys()
    assert versions["machine"]["device_name"] == "CPU"
    assert {"no_mask", "padding_mask"} <= versions["sdpa"].keys()
    assert versions["sdpa"]["no_mask"]["backends"]["MATH"] == "ok"

    assert stages["build"]["bytes_on_disk"] > 0
    # The full-size recipe, built on the meta device: Z-Image-Turbo's real sizes.
    full = stages["build"]["full_size_on_meta"]
    assert round(full["transformer"] / 1e9, 2) == 6.15 and round(full["text_encoder"] / 1e9, 2) == 4.02
    cold = stages["cold_start"]
    assert cold["page_cache"]["files"] > 0 and cold["page_cache"]["drop_caches"].startswith("not tried")
    assert cold["first_image_s"] > 0 and cold["total_s"] >= cold["load_to_first_image_s"]

    settings = results["settings"]
    for name, batch in (("plain_b1", 1), ("plain_b4", 4)):
        rate = stages[name]["pipeline"]
        assert rate["batch"] == batch and rate["images_per_s"] > 0
        repeats = settings["repeats"] if batch == 1 else settings["repeats_batch"]
        assert len(stages[name]["pipeline_runs_s"]) == repeats

    fast = stages["fast_eager"]
    report = fast["fast_path"]
    assert list(report["attention_tried"]) == list(ATTENTION_ORDER)
    assert report["attention"] == "native"
    assert report["attention_tried"]["native"].startswith("ok (batched vs solo")
    assert report["compile_mode"] is None and report["channels_last_vae"] is True
    # Each image of the mixed-length batch vs the same prompt alone: equal up to rounding.
    assert len(fast["batched_vs_solo"]) == 4
    assert len({c["prompt_chars"] for c in fast["batched_vs_solo"]}) == 4
    for check in fast["batched_vs_solo"]:
        assert check["relative_l2"] < 1e-3 and not check["nan"] and not check["inf"]
    ab = fast["vae_channels_last_ab"]
    assert ab["relative_l2"] < 1e-4 and ab["faster"] in ("contiguous", "channels_last")
    assert fast["engine_b1"]["batch"] == 1 and fast["engine_b4"]["batch"] == 4

    compiled = stages["compile"]
    assert compiled["fast_path"]["compile_mode"] == "default"
    assert compiled["fast_path"]["compile_backend"] == "eager"  # tiny: trace only, no codegen
    assert compiled["recompile_limit"] >= 64
    assert compiled["graphs_after_b4"] >= compiled["graphs_after_b1"] >= compiled["graphs_after_load"] > 0
    for key in ("b1", "b4"):
        assert compiled[f"vs_eager_{key}"]["relative_l2"] < 1e-3
        assert compiled[f"first_request_{key}_s"] > 0

    paths = [(row["path"], row["batch"]) for row in results["table"]]
    assert paths == [("plain, eager", 1), ("plain, eager", 4), ("fast, eager", 1),
                     ("fast, eager", 4), ("fast, compiled", 1), ("fast, compiled", 4)]
    assert all("tflop_s" not in row for row in results["table"])  # the floor is the full model's

    # The table comes last on stdout.
    tail = [line for line in proc.stdout.splitlines() if line.strip()][-11:]
    assert any(line.startswith("path | batch | s/image") for line in tail), proc.stdout[-2000:]
    assert tail[-1].startswith("stages: versions ok")


def test_budget_skips_stages_and_says_why(zpipe_cache: Path, tmp_path: Path, capsys) -> None:
    bench = _bench_module()
    out = tmp_path / "gpu.json"
    results = bench.main(["--tiny", "--budget-s", "0", "--model-dir", str(tmp_path), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results, default=str))
    skipped = [name for name, s in results["stages"].items() if s.get("status") == "skipped"]
    assert "versions" in skipped and "compile" in skipped
    assert results["stages"]["versions"]["reason"].startswith("time budget:")
    assert results["stages"]["compile"]["reason"] == "no pipeline"  # what it needed never ran
    assert results["table"] == []
    assert "stages: versions skipped" in capsys.readouterr().out


def test_a_failing_stage_is_recorded_and_the_next_one_runs(tmp_path: Path) -> None:
    bench = _bench_module()
    out = tmp_path / "r.json"
    run = bench.Run(out, budget_s=60, hard_s=120, started=time.perf_counter())
    seen = []

    def fails() -> None:
        run.put("one", measured=1.5)
        seen.append(json.loads(out.read_text())["stages"]["one"]["measured"])  # on disk at once
        raise ValueError("a kernel rejected the mask")

    def stops() -> None:
        run.add("two", "runs_s", 0.1)
        run.check(3600, "the next run")

    assert run.run_stage("one", 10, fails) is False
    assert run.run_stage("two", 10, stops) is True
    assert run.run_stage("three", 10, lambda: None, skip="needs CUDA") is False
    stages = json.loads(out.read_text())["stages"]
    assert seen == [1.5]
    assert stages["one"]["status"] == "failed" and "ValueError: a kernel rejected" in stages["one"]["error"]
    assert stages["two"]["status"].startswith("stopped: stopped before the next run")
    assert stages["two"]["runs_s"] == [0.1]
    assert stages["three"] == {"status": "skipped", "reason": "needs CUDA"}
    assert json.loads(out.read_text())["errors"] == ["one: ValueError: a kernel rejected the mask"]


def test_watchdog_interrupts_a_stage_over_its_budget(tmp_path: Path) -> None:
    bench = _bench_module()
    run = bench.Run(tmp_path / "r.json", budget_s=60, hard_s=120, started=time.perf_counter())
    run.start_watchdog(grace_s=0.5)

    def hangs() -> None:
        for _ in range(300):  # 30 s unless interrupted
            time.sleep(0.1)

    try:
        start = time.perf_counter()
        assert run.run_stage("stuck", 0.5, hangs, need_s=0) is False
        assert time.perf_counter() - start < 10
    finally:
        run.stop_watchdog()
    assert run.rec("stuck")["status"].startswith("interrupted by the watchdog")
    assert run.run_stage("after", 5, lambda: None) is True  # the run goes on


@pytest.mark.parametrize("hard_s", [2])
def test_watchdog_exits_at_the_hard_limit_with_the_results_written(tmp_path: Path, hard_s: int) -> None:
    out = tmp_path / "r.json"
    code = textwrap.dedent(f"""
        import importlib.util, time
        spec = importlib.util.spec_from_file_location("bench_gpu", {str(SCRIPT)!r})
        bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
        run = bench.Run(__import__("pathlib").Path({str(out)!r}), budget_s=60, hard_s={hard_s},
                        started=time.perf_counter())
        run.start_watchdog(grace_s=100)
        def stuck():
            run.put("stuck", measured=1)
            time.sleep(60)  # one long uninterruptible call, as a hung kernel
        run.run_stage("stuck", 50, stuck)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["watchdog"].startswith(f"hard limit {hard_s} s reached in stage 'stuck'")
    assert results["stages"]["stuck"] == {"status": "killed by the watchdog (hard limit)",
                                          "budget_s": 50, "measured": 1}
