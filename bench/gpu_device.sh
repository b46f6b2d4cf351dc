#!/usr/bin/env bash
# Run bench/gpu.py on a lent GPU machine: torch preinstalled, no internet, no venv.
#
#   bash bench/gpu_device.sh                          # wheels from shared/wheels/
#   ZPIPE_WHEELS=.whl bash bench/gpu_device.sh        # or any directory of wheels
#   bash bench/gpu_device.sh --compile-modes default  # extra arguments go to bench/gpu.py
#
# Installs every wheel in that directory (at least diffusers==0.42.1, the one package the
# machine's image lacks) with --no-deps into a private target directory put first on
# PYTHONPATH, so the machine's own torch and libraries stay untouched; then runs the benchmark
# under a 7-minute limit. Results: $OUT/gpu.json and the log $OUT/gpu.log ($OUT defaults to
# ./out). The 20.5 GB random-weight model is saved once under $ZPIPE_CACHE/models.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
OUT="${OUT:-$PWD/out}"
WHEELS="${ZPIPE_WHEELS:-shared/wheels}"
SITE="${ZPIPE_SITE:-/tmp/zpipe-site}"
export ZPIPE_CACHE="${ZPIPE_CACHE:-/tmp/zpipe-cache}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" "$SITE"

has_diffusers() {
    "$PYTHON" -c 'import importlib.metadata as m, sys; sys.exit(m.version("diffusers") != "0.42.1")' \
        2>/dev/null
}

if compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "installing $(ls "$WHEELS"/*.whl | wc -l) wheel(s) from $WHEELS into $SITE"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl
fi
if ! has_diffusers; then
    echo "diffusers==0.42.1 is not installed and no wheel for it is in '$WHEELS'." >&2
    echo "Fetch it where pip works: pip download --no-deps diffusers==0.42.1 -d shared/wheels" >&2
    echo "(or set ZPIPE_WHEELS to a directory holding it)." >&2
    exit 2
fi

"$PYTHON" - <<'EOF'
import diffusers, torch, transformers
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), diffusers {diffusers.__version__}, "
      f"transformers {transformers.__version__}, GPU: "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
EOF

status=0
timeout --signal=TERM --kill-after=20 420 \
    "$PYTHON" bench/gpu.py --out "$OUT/gpu.json" "$@" 2>&1 | tee "$OUT/gpu.log" || status=$?
if [ "$status" -eq 124 ]; then
    echo "bench/gpu.py hit the 7-minute limit; $OUT/gpu.json holds the phases that finished." >&2
fi
exit "$status"
