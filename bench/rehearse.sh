#!/usr/bin/env bash
# Rehearse the GPU call on this CPU: bench/gpu_device.sh --tiny, end to end, in a venv that
# matches the GPU machine's libraries (bench/rehearse-requirements.txt), with the carried wheels
# installed from .whl/ with --no-index exactly as there. Then checks what the device tool needs:
# the results, the files it brings back, and the size of the tree it sends.
#
#   bash bench/rehearse.sh                # venv + wheels (cached), the tiny run, the checks
#   bash bench/rehearse.sh --wheels-only  # fetch .whl/ only (needs PyPI); the device call carries it
#   bash bench/rehearse.sh --stages versions,build   # extra arguments go to bench/gpu.py
#
# First run: a few minutes (the venv; torch comes from this machine's disk); later runs reuse
# .venv-rehearsal while bench/rehearse-requirements.txt is unchanged, and take about a minute.
# Results: $OUT (default out/rehearsal/): gpu.json, gpu.log.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${ZPIPE_REHEARSAL_PYTHON:-python3}"
VENV="${ZPIPE_REHEARSAL_VENV:-.venv-rehearsal}"
WHEELS="${ZPIPE_WHEELS:-.whl}"
OUT="${OUT:-out/rehearsal}"
REQUIREMENTS=bench/rehearse-requirements.txt
CARRIED=("diffusers==0.42.1" "torchao==0.18.0")  # what the GPU machine's image lacks

# 1. The carried wheels, for the device's Python 3.12 on x86-64 (both also install on 3.11:
#    diffusers is pure Python, torchao's one wheel is abi3).
fetch_wheels() {
    mkdir -p "$WHEELS"
    for spec in "${CARRIED[@]}"; do
        name="${spec%%==*}" version="${spec##*==}"
        if compgen -G "$WHEELS/${name}-${version}-*.whl" >/dev/null; then
            continue
        fi
        echo "[rehearse] fetching $spec into $WHEELS"
        "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --disable-pip-version-check \
            --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d "$WHEELS" "$spec"
    done
}
fetch_wheels
if [ "${1:-}" = "--wheels-only" ]; then
    ls -l "$WHEELS"
    exit 0
fi

# 2. The device-like venv, rebuilt only when its requirements change.
stamp="$VENV/.zpipe-rehearsal"
want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1) $("$PYTHON" -V 2>&1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[rehearse] building $VENV from $REQUIREMENTS (first run: a few minutes)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQUIREMENTS"
    if "$VENV/bin/python" -c 'import diffusers' 2>/dev/null; then
        echo "[rehearse] $VENV must not hold diffusers: it comes from $WHEELS, as on the device" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi

# 3. The device script, --tiny, with a fresh private site dir and model cache.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
rm -rf "$OUT"
mkdir -p "$OUT"
start=$(date +%s)
status=0
PYTHON="$VENV/bin/python" OUT="$OUT" ZPIPE_SITE="$scratch/site" ZPIPE_CACHE="$scratch/cache" \
    ZPIPE_WHEELS="$WHEELS" bash bench/gpu_device.sh --tiny "$@" || status=$?
echo "[rehearse] bench/gpu_device.sh --tiny: exit $status after $(( $(date +%s) - start )) s"
[ "$status" -eq 0 ] || exit "$status"

# 4. What the device tool needs: results complete, files it brings back, the tree it sends.
"$VENV/bin/python" bench/rehearse_check.py --out "$OUT" --wheels "$WHEELS"
