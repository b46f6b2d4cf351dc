"""The GPU call rehearsed on the CPU (bench/rehearse.sh): the device script, --tiny, end to end, in a
venv with the GPU machine's library versions, the carried wheels installed with --no-index.

Slow the first time (it builds .venv-rehearsal, ~1-3 min; torch comes from the machine's disk)
and needs PyPI once to fetch the two wheels into .whl/; later runs reuse both and take about a
minute. Timings are never asserted on.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_rehearsal_of_the_device_call(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(["bash", str(REPO / "bench" / "rehearse.sh")], cwd=REPO,
                          env={**env, "OUT": str(out)}, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "[rehearse] OK: the device call should run and come back" in proc.stdout

    results = json.loads((out / "gpu.json").read_text())
    packages = results["stages"]["versions"]["packages"]
    # The device's versions, where this machine can install them (bench/rehearse-requirements.txt).
    assert packages["transformers"] == "5.17.0" and packages["huggingface-hub"] == "1.33.0"
    assert packages["tokenizers"].startswith("0.23.") and packages["safetensors"] == "0.8.0"
    # The carried wheels, installed from .whl/ into the private site dir as on the device.
    assert packages["diffusers"] == "0.42.1" and packages["torchao"] == "0.18.0"
    assert results["stages"]["fp8"]["torchao"] == "0.18.0"
    assert sorted(p.name for p in out.iterdir()) == ["gpu.json", "gpu.log"]
