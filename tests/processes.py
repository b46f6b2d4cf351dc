"""The one way tests start and stop a process: output to a log, terminate, wait, then kill."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Terminate, wait up to `timeout` s for a clean exit, then kill (and reap) it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def running(cmd: Sequence[str | Path], *, log: Path, env: Mapping[str, str] | None = None,
            cwd: Path | None = None, stop_timeout: float = 20) -> Iterator[subprocess.Popen]:
    """Run `cmd` (stdout and stderr appended to `log`) for the block; stopped however it ends."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(part) for part in cmd], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            stop_process(proc, stop_timeout)
