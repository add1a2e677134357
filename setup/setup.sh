#!/usr/bin/env bash
# make setup: everything a fresh Debian 12 machine needs to run kvtool's demo and tests.
# Idempotent and quick when nothing changed: each step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

step() { printf '\n==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Debian packages, from the one list the launcher image uses too. QEMU and libvirt come from
#    bookworm-backports (setup/kvtool-backports.pref says which and why): its source and pin go in first.
UPDATE=
for file in kvtool-backports.sources:sources.list.d/kvtool-backports.sources \
            kvtool-backports.pref:preferences.d/kvtool-backports; do
  target=/etc/apt/${file#*:}
  if ! cmp -s "setup/${file%%:*}" "$target"; then
    step "apt: installing $target (from setup/${file%%:*})"
    as_root install -m 0644 "setup/${file%%:*}" "$target"
    UPDATE=1
  fi
done
mapfile -t PKGS < <(awk '!/^[[:space:]]*#/ && NF {print $1}' setup/apt-packages.txt)
# apt itself says whether anything is missing or older than the pinned version (and a package it does not
# know yet, before the first update, fails the simulation: install then too).
if [ -n "$UPDATE" ] || ! PLAN=$(apt-get -s -q install --no-install-recommends "${PKGS[@]}" 2>&1) \
    || grep -q '^Inst ' <<<"$PLAN"; then
  step "installing Debian packages: ${PKGS[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PKGS[@]}"
else
  step "Debian packages: all ${#PKGS[@]} present"
fi

# 2. The libvirt-qemu user the QEMU driver looks up before reading qemu.conf (Debian's numbers).
if ! getent group libvirt-qemu >/dev/null; then as_root groupadd --system --gid 64055 libvirt-qemu; fi
if ! getent group kvm >/dev/null; then as_root groupadd --system kvm; fi
if ! id libvirt-qemu >/dev/null 2>&1; then
  step "creating the libvirt-qemu user"
  as_root useradd --system --uid 64055 --gid kvm --groups libvirt-qemu --home-dir /var/lib/libvirt \
    --no-create-home --shell /usr/sbin/nologin libvirt-qemu
fi

# 3. Go, for the control plane and containerd (Debian 12's golang is too old; the machine provides a new one).
if ! command -v go >/dev/null; then
  echo "error: Go 1.25 or newer is required to build the control plane and containerd; install it and re-run make setup" >&2
  exit 1
fi

# 4. The virtualenv, reinstalled only when pyproject.toml changes.
STAMP=.venv/.kvtool-installed
WANT=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  step "creating .venv and installing kvtool[dev] (editable)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  echo "$WANT" > "$STAMP"
else
  step ".venv up to date"
fi

# 5. The Go binaries, cached by their inputs' hash (a warm machine does not rebuild).
step "Go binaries: the control plane (with kubelet and kube-proxy), containerd, pause"
.venv/bin/kvtool cluster build

# 6. kvtool's own image, which every embedded node imports; cached layer by layer.
step "the launcher image"
.venv/bin/kvtool image build launcher
