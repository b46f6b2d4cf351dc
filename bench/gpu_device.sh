#!/usr/bin/env bash
# The one GPU call: bench/gpu.py on a lent GPU machine (torch preinstalled, no internet, no venv).
#
#   device tool:  run(command="bash bench/gpu_device.sh", carry=[".whl"], timeout_s=580)
#   here (CPU):   bash bench/rehearse.sh           # the same script, --tiny, in a device-like venv
#   options:      bash bench/gpu_device.sh --stages versions,build,cold_start   # -> bench/gpu.py
#
# 1. Installs the carried wheels in $ZPIPE_WHEELS (default .whl/: diffusers==0.42.1, which the
#    machine's image lacks, and torchao==0.18.0 for the fp8 stage; fetch them with
#    `bash bench/rehearse.sh --wheels-only`) with --no-index --no-deps into a private target
#    directory put first on PYTHONPATH: the machine's own torch and libraries stay untouched.
# 2. Runs bench/gpu.py in ONE process: it budgets itself (500 s, watchdog exit at 540 s) inside
#    this script's last-resort limit (550 s), inside the tool's call (580 s of its 600).
# Results in $OUT (the tool's folder; ./out here): gpu.json (rewritten after every measurement),
# gpu.log (stdout + stderr, the table last), nvidia-smi.txt. Three files: the tool takes 8.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
OUT="${OUT:-$PWD/out}"
WHEELS="${ZPIPE_WHEELS:-.whl}"
SITE="${ZPIPE_SITE:-/tmp/zpipe-site}"
LIMIT_S="${ZPIPE_BENCH_LIMIT_S:-550}"
export ZPIPE_CACHE="${ZPIPE_CACHE:-/tmp/zpipe-cache}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" "$SITE"

tiny=0
for arg in "$@"; do [ "$arg" = "--tiny" ] && tiny=1; done

# 1. The carried wheels.
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "[gpu_device] installing $(ls "$WHEELS"/*.whl | wc -l) wheel(s) from $WHEELS into $SITE (--no-index)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --disable-pip-version-check --target "$SITE" "$WHEELS"/*.whl || exit 2
fi
if ! "$PYTHON" -c 'import importlib.metadata as m, sys; sys.exit(m.version("diffusers") != "0.42.1")' \
        2>/dev/null; then
    echo "[gpu_device] diffusers==0.42.1 is not installed and no wheel for it is in '$WHEELS'." >&2
    echo "Fetch the wheels where PyPI works: bash bench/rehearse.sh --wheels-only" >&2
    exit 2
fi
if [ "$tiny" = 0 ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
fi

# 2. The benchmark, one process. Model saved once under /tmp (the machine's 64 GiB disk).
args=(--out "$OUT/gpu.json")
if [ "$tiny" = 0 ]; then
    args+=(--model-dir "${ZPIPE_MODEL_DIR:-/tmp/zpipe-models}" --evict-imports)
fi
timeout --signal=TERM --kill-after=10 "$LIMIT_S" \
    "$PYTHON" bench/gpu.py "${args[@]}" "$@" 2>&1 | tee "$OUT/gpu.log"
status=${PIPESTATUS[0]}
if [ "$status" -eq 124 ]; then
    echo "[gpu_device] bench/gpu.py hit the ${LIMIT_S} s limit; $OUT/gpu.json holds every" \
         "measurement that finished." >&2
fi
exit "$status"
