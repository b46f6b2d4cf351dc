#!/usr/bin/env bash
# The tests on a fresh machine: set up, lint, then pytest. The tests start their own real
# services (a SeaweedFS S3 server with credentials and a Prefect API server) on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/bootstrap.sh
# The contact-sheet test looks at the page in a real browser (Debian's chromium, headless).
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[test] installing chromium (apt) for the browser test"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[test] chromium missing: the browser test is skipped (sudo apt-get install chromium)" >&2
  fi
fi
.venv/bin/ruff check .
.venv/bin/lint-imports  # the layering in pyproject.toml [tool.importlinter]
exec .venv/bin/pytest "$@"
