#!/usr/bin/env bash
# make demo: the embedded cluster up, the example lab planned, applied and booted, its status table,
# and each running VM's serial console showing the guest's readiness marker.
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
echo "==> kvtool apply -f examples/lab.yaml --stack $STACK --auto-approve --wait"
$KVTOOL apply -f examples/lab.yaml --stack "$STACK" --auto-approve --compact --wait --timeout 300
echo
echo "==> kvtool status --stack $STACK"
$KVTOOL status --stack "$STACK"
for vm in $($KVTOOL status --stack "$STACK" -o csv | awk -F, 'NR>1 && $4=="Running" {print $3}'); do
  echo
  echo "==> kvtool console $vm --tail (waiting for the guest's marker)"
  for _ in $(seq 1 60); do
    if $KVTOOL console "$vm" --tail | grep -q KVTOOL-GUEST-READY; then break; fi
    sleep 1
  done
  $KVTOOL console "$vm" --tail | grep -a KVTOOL-GUEST || { echo "no marker from $vm" >&2; exit 1; }
done
echo
KUBECTL="$(dirname "$($KVTOOL cluster build 2>/dev/null | head -n 1)")/kubectl"
KUBECONFIG_FILE="${KVTOOL_HOME:-$HOME/.kvtool}/kubeconfig"
echo "==> kubectl get nodes -o wide (real kubelets on containerd)"
"$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get nodes -o wide
echo
echo "kubectl get --raw /readyz: $("$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get --raw /readyz)"
