"""Checks after a rehearsal (bench/rehearse.sh): would the real device call work and come back?

1. gpu.json: no errors, every stage ok (or skipped with a reason on the CPU), the carried
   diffusers came from the private site dir, not the venv.
2. $OUT fits the device tool: at most 8 files, each at most 16 MiB, 64 MiB in all, at most two
   folders down, names of letters, digits, '.', '_' and '-'.
3. The tree the tool sends (tracked + untracked-not-ignored files + the carried .whl/) is under
   64 MiB.

    python bench/rehearse_check.py --out out/rehearsal --wheels .whl
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
MAX_FILES, MAX_FILE, MAX_OUT, MAX_TREE = 8, 16 * MIB, 64 * MIB, 64 * MIB
NAME = re.compile(r"^[A-Za-z0-9._-]+$")
# On the CPU these stages cannot run; anything else must finish.
CPU_SKIPPED = {"fp8"}


def check_results(out: Path) -> list[str]:
    problems = []
    results = json.loads((out / "gpu.json").read_text())
    if results.get("errors"):
        problems.append(f"errors recorded: {results['errors']}")
    for name, stage in results["stages"].items():
        status = stage.get("status", "ok" if name == "process" else "?")
        if status == "skipped" and name in CPU_SKIPPED and stage.get("reason"):
            continue
        if status != "ok":
            problems.append(f"stage {name}: {status} {stage.get('reason') or stage.get('error') or ''}")
    packages = results["stages"].get("versions", {}).get("packages", {})
    if packages.get("diffusers") != "0.42.1":
        problems.append(f"diffusers {packages.get('diffusers')} ran, not the carried 0.42.1")
    if not results.get("table"):
        problems.append("no table rows")
    return problems


def check_out(out: Path) -> list[str]:
    problems = []
    files = [p for p in out.rglob("*") if p.is_file()]
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files in {out}, the tool brings back {MAX_FILES}")
    for f in files:
        rel = f.relative_to(out)
        if f.stat().st_size > MAX_FILE:
            problems.append(f"{rel}: {f.stat().st_size / MIB:.1f} MiB > 16 MiB")
        if len(rel.parts) > 3 or not all(NAME.match(part) for part in rel.parts):
            problems.append(f"{rel}: too deep or a name the tool refuses")
    if sum(f.stat().st_size for f in files) > MAX_OUT:
        problems.append(f"{out}: over 64 MiB in all")
    return problems


def tree_bytes(wheels: Path) -> int | None:
    """Bytes the device tool would send: git's tracked + untracked-not-ignored files + wheels."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None  # not a git checkout: nothing to measure
    total = 0
    for name in filter(None, listed.decode().split("\0")):
        path = REPO / name
        if path.is_file():
            total += path.stat().st_size
    total += sum(f.stat().st_size for f in wheels.rglob("*") if f.is_file())
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wheels", type=Path, default=REPO / ".whl")
    args = parser.parse_args(argv)
    problems = check_results(args.out) + check_out(args.out)
    size = tree_bytes(args.wheels)
    if size is not None and size > MAX_TREE:
        problems.append(f"the tree the tool sends is {size / MIB:.1f} MiB > 64 MiB")
    files = sorted(p.name for p in args.out.rglob("*") if p.is_file())
    tree = "not a git checkout" if size is None else f"{size / MIB:.1f} MiB with the wheels"
    print(f"[rehearse] out: {', '.join(files)}; tree sent: {tree}")
    for problem in problems:
        print(f"[rehearse] PROBLEM: {problem}", file=sys.stderr)
    print("[rehearse] " + ("FAILED" if problems else "OK: the device call should run and come back"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
