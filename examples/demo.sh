#!/usr/bin/env bash
# make demo: the embedded cluster up, then a status line from the real API.
set -euo pipefail
cd "$(dirname "$0")/.."
KVTOOL=.venv/bin/kvtool
$KVTOOL cluster up
KUBECTL="$(dirname "$($KVTOOL cluster build 2>/dev/null)")/kubectl"
KUBECONFIG_PATH="${KVTOOL_HOME:-$HOME/.kvtool}/kubeconfig"
echo
$KVTOOL cluster status
echo
echo "kubectl get --raw /readyz: $("$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" get --raw /readyz)"
