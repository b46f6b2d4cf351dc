#!/usr/bin/env bash
# Validate infra/ offline with client-side tools from PyPI; no Docker engine, no cluster.
#   1. every YAML file parses; prefect.yaml against Prefect's own models and flows/deployments.py;
#      kustomization, k8s cross-references, compose .env coverage, Dockerfile structure
#      (infra/check_infra.py)
#   2. Kubernetes manifests against the pinned Kubernetes version's OpenAPI schemas, strict
#      (kubernetes-validate ships the schemas: no network)
#   3. compose.yaml against the Compose Specification schema vendored in check-jsonschema
#   4. shell scripts parse (bash -n)
# Not checked here: Dockerfile lint (hadolint is not on PyPI), image builds (no Docker engine),
# `kubectl apply --dry-run=server` (no cluster), `docker compose config` interpolation.
# Env: ZPIPE_K8S_VERSION (default 1.33.0); ZPIPE_VALIDATE_NO_INSTALL=1 to fail instead of
# pip-installing missing validators into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="${ZPIPE_K8S_VERSION:-1.33.0}"
BIN=.venv/bin
VALIDATORS=("kubernetes-validate==1.37.0" "check-jsonschema==0.39.0")

if [ ! -x "$BIN/kubernetes-validate" ] || [ ! -x "$BIN/check-jsonschema" ]; then
  if [ -n "${ZPIPE_VALIDATE_NO_INSTALL:-}" ]; then
    echo "validate: kubernetes-validate / check-jsonschema missing: pip install ${VALIDATORS[*]}" >&2
    exit 1
  fi
  echo "[validate] installing ${VALIDATORS[*]} into .venv"
  "$BIN/python" -m pip install -q "${VALIDATORS[@]}"
fi

echo "[validate] 1. YAML, prefect.yaml, cross-references, Dockerfile structure"
"$BIN/python" infra/check_infra.py

echo "[validate] 2. Kubernetes manifests (strict, Kubernetes $K8S_VERSION)"
manifests=()
for f in infra/k8s/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")  # not a cluster resource
done
"$BIN/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${manifests[@]}"

echo "[validate] 3. compose.yaml (Compose Specification schema)"
"$BIN/check-jsonschema" --builtin-schema vendor.compose-spec infra/compose.yaml

echo "[validate] 4. shell scripts"
for f in infra/*.sh; do bash -n "$f"; done

echo "all infra files valid"
