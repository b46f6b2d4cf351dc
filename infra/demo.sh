#!/usr/bin/env bash
# The main job on a fresh machine: set up, then run the demo weekly campaign with the
# built-in tiny model into ./zpipe-out (a local store). Extra arguments go to `zpipe run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/bootstrap.sh
exec .venv/bin/zpipe run configs/campaigns/weekly-demo.yaml "$@"
