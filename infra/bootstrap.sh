#!/usr/bin/env bash
# Set up everything zpipe needs on a fresh Debian/Ubuntu machine, idempotently:
# a CJK font (apt), a virtualenv at .venv with zpipe and its dev tools (pip).
# Re-running is cheap: the pip step is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${ZPIPE_TORCH_SPEC:-torch==2.13.0}"   # CPU build here; on a GPU box set e.g. torch==2.11.0

# 1. A CJK font: Pillow's default font draws Chinese as boxes.
if ! fc-list :lang=zh 2>/dev/null | grep -q . && [ -z "${ZPIPE_FONT:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[bootstrap] installing the CJK font fonts-wqy-microhei (apt)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei fontconfig >/dev/null
  else
    echo "[bootstrap] no CJK font found: run 'sudo apt-get install fonts-wqy-microhei'" \
         "or set ZPIPE_FONT=/path/to/a/cjk-font.ttf" >&2
    exit 1
  fi
fi

# 2. exiftool: the tests read the XMP labels back with a third-party reader.
if ! command -v exiftool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[bootstrap] installing exiftool (apt: libimage-exiftool-perl)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libimage-exiftool-perl >/dev/null
  else
    echo "[bootstrap] exiftool missing (only the tests need it):" \
         "sudo apt-get install libimage-exiftool-perl" >&2
  fi
fi

# 3. The virtualenv.
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.zpipe-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $TORCH_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing zpipe and its dependencies into .venv (first run: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "$TORCH_SPEC"
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
