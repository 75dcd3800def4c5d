#!/usr/bin/env bash
# `make deploy-check`: the deploy recipes parse, fit together and state --help's defaults
# (scripts/deploy_check/deploy_check.py), and the Kubernetes manifests pass
# `kubernetes-validate --strict` against the oldest and newest Kubernetes versions it knows
# here (schemas bundled in the package: no cluster needed). The tools live in a venv at
# target/deploy-check-venv (created on first run, and again when requirements.txt changes).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo_bins.sh
venv="$(cargo_target_dir)/deploy-check-venv"
req=scripts/deploy_check/requirements.txt
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
if ! cmp -s "$req" "$venv/.requirements.txt"; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/.requirements.txt"
fi
"$venv/bin/python" scripts/deploy_check/deploy_check.py
for k in 1.29.0 1.37.0; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$k" deploy/kubernetes/*.yaml ||
    { echo "deploy_check: FAIL: deploy/kubernetes/ against the Kubernetes $k schemas" >&2; exit 1; }
done
echo "deploy_check: deploy/kubernetes/*.yaml pass kubernetes-validate --strict for Kubernetes 1.29 and 1.37"
