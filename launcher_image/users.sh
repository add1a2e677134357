# The launcher image's users and groups (Debian's numbers for libvirt-qemu; 65532 runs the controller).
# ONE script, run inside the image by launcher_image/Dockerfile and by kvtool.images.container (mmdebstrap).
set -eu
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt-qemu >/dev/null || groupadd --system --gid 64055 libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 || useradd --system --uid 64055 --gid kvm --groups libvirt-qemu \
  --home-dir /var/lib/libvirt --no-create-home --shell /usr/sbin/nologin libvirt-qemu
id kvtool >/dev/null 2>&1 || useradd --system --uid 65532 --user-group --no-create-home \
  --shell /usr/sbin/nologin kvtool
