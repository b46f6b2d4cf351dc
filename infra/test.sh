#!/usr/bin/env bash
# The tests on a fresh machine: set up, lint, then pytest. The tests start their own real
# services (a SeaweedFS S3 server with credentials and a Prefect API server) on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/bootstrap.sh
.venv/bin/ruff check .
exec .venv/bin/pytest "$@"
