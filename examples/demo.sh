#!/usr/bin/env bash
# make demo: the embedded cluster up, the example lab planned and applied, its status table.
set -euo pipefail
cd "$(dirname "$0")/.."
KVTOOL=.venv/bin/kvtool
STACK=${STACK:-lab}

$KVTOOL cluster up
$KVTOOL image build tiny-linux
echo
echo "==> kvtool plan -f examples/lab.yaml --stack $STACK"
rc=0; $KVTOOL plan -f examples/lab.yaml --stack "$STACK" --detailed-exitcode --compact || rc=$?
[ "$rc" = 1 ] && exit 1
echo
echo "==> kvtool apply -f examples/lab.yaml --stack $STACK --auto-approve"
$KVTOOL apply -f examples/lab.yaml --stack "$STACK" --auto-approve --compact
echo
echo "==> kvtool status --stack $STACK"
$KVTOOL status --stack "$STACK"
echo
KUBECTL="$(dirname "$($KVTOOL cluster build 2>/dev/null)")/kubectl"
echo "kubectl get --raw /readyz: $("$KUBECTL" --kubeconfig "${KVTOOL_HOME:-$HOME/.kvtool}/kubeconfig" get --raw /readyz)"
