"""The shell scripts inside the tiny-linux initramfs (busybox sh), kept as text.

They live in a Python module so the package needs no data files. The lines the
guest prints on its serial console are a contract: tests, benchmarks and the
launcher wait for them, so they are named here once (MARKER_*).
"""

from __future__ import annotations

MARKER_READY = "KVTOOL-GUEST-READY"  # KVTOOL-GUEST-READY hostname=<name> uptime=<seconds>
MARKER_IP = "KVTOOL-GUEST-IP"  # KVTOOL-GUEST-IP <if> <ipv4>/<prefix> gw=<gw>  |  KVTOOL-GUEST-IP none
MARKER_CLOUDINIT = "KVTOOL-GUEST-CLOUDINIT"  # KVTOOL-GUEST-CLOUDINIT instance-id=<id> local-hostname=<name>
MARKER_USERDATA_DONE = "KVTOOL-GUEST-USERDATA-DONE"  # KVTOOL-GUEST-USERDATA-DONE exit=<status>
MARKER_HTTP = "KVTOOL-GUEST-HTTP"  # KVTOOL-GUEST-HTTP port=80
MARKER_POWEROFF = "KVTOOL-GUEST-POWEROFF"

# Paths inside the guest the scripts agree on.
MODULES_LIST = "etc/kvtool/modules"  # "<group> <name> [insmod params]" per line, in load order
MODULES_DIR = "lib/modules"  # <name>.ko
UDHCPC_SCRIPT = "etc/kvtool/udhcpc.sh"
POWEROFF_SCRIPT = "sbin/kvtool-poweroff"
ACPI_POWER_HANDLER = "etc/acpi/PWRF/00000080"  # busybox acpid runs ./PWRF/00000080 on the power button

INIT = r"""#!/bin/sh
# PID 1 of kvtool's tiny-linux guest. It must never exit: the kernel panics when init dies.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /run /tmp /var/log /mnt/cidata /www

# busybox `poweroff`/`reboot`/`halt` signal PID 1 (USR2/TERM/USR1); ash runs these between commands.
trap '/@POWEROFF_SCRIPT@' USR2
trap 'reboot -f' TERM
trap 'halt -f' USR1

cmdline_arg() {  # prints VALUE of NAME=VALUE on the kernel command line; fails if absent
    set -f
    read -r line </proc/cmdline
    for word in $line; do
        case "$word" in "$1="*) set +f; echo "${word#*=}"; return 0 ;; esac
    done
    set +f
    return 1
}

load_modules() {  # insmod one group of /@MODULES_LIST@ ("<group> <module> [params]" lines, in load order)
    while read -r group mod params; do
        [ "$group" = "$1" ] || continue
        insmod "/@MODULES_DIR@/$mod.ko" $params || echo "kvtool-init: insmod $mod failed"
    done </@MODULES_LIST@
}

explicit_name=$(cmdline_arg kvtool.hostname)
hostname "${explicit_name:-tiny}"
read -r uptime _ </proc/uptime
# The firmware leaves the cursor mid-line (and `quiet` prints nothing after it): start a fresh line.
echo
echo "@READY@ hostname=$(hostname) uptime=$uptime"

# Network first: it is what callers wait for next. Storage modules (ATA probing is slow) come after.
load_modules net
# The power button: button.ko turns the ACPI event into an input event, acpid runs the handler.
load_modules acpi
acpid -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid || echo "kvtool-init: acpid failed"

iface=
for dir in /sys/class/net/*; do
    [ -e "$dir/device" ] && iface=${dir##*/} && break
done
ip link set lo up
rm -f /run/kvtool-ip
if [ -n "$iface" ] && ip link set "$iface" up \
        && udhcpc -i "$iface" -s /@UDHCPC@ -n -q -t 5 -x "hostname:$(hostname)" >/run/udhcpc.log 2>&1 \
        && [ -s /run/kvtool-ip ]; then
    echo "@IP@ $(cat /run/kvtool-ip)"
else
    [ -s /run/udhcpc.log ] && sed 's/^/kvtool-init: /' /run/udhcpc.log
    echo "@IP@ none"
fi

# NoCloud seed: an ISO9660 volume labelled cidata (virtio disk or cdrom) with meta-data and user-data.
load_modules storage
seed=
for label in cidata CIDATA; do
    dev=$(findfs "LABEL=$label" 2>/dev/null) && mount -t iso9660 -o ro "$dev" /mnt/cidata && seed=/mnt/cidata && break
done
meta() {  # value of a top-level "key: value" line of meta-data (YAML subset)
    sed -n "s/^$1:[[:space:]]*//p" "$seed/meta-data" | head -n 1 | tr -d "\"'\r"
}
if [ -n "$seed" ] && [ -f "$seed/meta-data" ]; then
    instance_id=$(meta instance-id)
    local_hostname=$(meta local-hostname)
    echo "@CLOUDINIT@ instance-id=$instance_id local-hostname=$local_hostname"
    # Like cloud-init, local-hostname names the guest, unless kvtool.hostname= said otherwise.
    [ -z "$explicit_name" ] && [ -n "$local_hostname" ] && hostname "$local_hostname"
fi

echo "kvtool guest $(hostname)" >/www/index.html
httpd -p 80 -h /www && echo "@HTTP@ port=80"

if [ -n "$seed" ] && [ -f "$seed/user-data" ]; then
    read -r first <"$seed/user-data"
    case "$first" in
    '#!/bin/sh' | '#!/bin/sh '*)
        cp "$seed/user-data" /run/user-data.sh && chmod 700 /run/user-data.sh
        (/run/user-data.sh; echo "@USERDATA_DONE@ exit=$?") &
        ;;
    esac
fi

# Idle forever. `wait` (unlike a foreground command) returns as soon as a trapped signal arrives,
# so `poweroff` in the guest is handled at once; it also reaps orphans re-parented to PID 1.
while :; do
    sleep 3600 &
    wait $!
done
"""

UDHCPC = r"""#!/bin/sh
# Called by udhcpc with $1 = deconfig | bound | renew | leasefail | nak and the lease in the environment
# ($mask is the prefix length). Applies it and records it for /init to print.
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound | renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    gw=${router%% *}
    [ -n "$gw" ] && ip route replace default via "$gw" dev "$interface"
    : >/etc/resolv.conf
    [ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf
    for server in $dns; do echo "nameserver $server" >>/etc/resolv.conf; done
    echo "$interface $ip/${mask:-24} gw=${gw:-none}" >/run/kvtool-ip
    ;;
esac
exit 0
"""

POWEROFF = r"""#!/bin/sh
# The one way the guest powers off (ACPI power button, or `poweroff` signalling PID 1).
echo "@POWEROFF@" >/dev/console
sync
poweroff -f
"""


def render(template: str) -> str:
    """Fill the @NAME@ placeholders shared by the scripts."""
    values = {
        "@READY@": MARKER_READY,
        "@IP@": MARKER_IP,
        "@CLOUDINIT@": MARKER_CLOUDINIT,
        "@USERDATA_DONE@": MARKER_USERDATA_DONE,
        "@HTTP@": MARKER_HTTP,
        "@POWEROFF@": MARKER_POWEROFF,
        "@MODULES_DIR@": MODULES_DIR,
        "@MODULES_LIST@": MODULES_LIST,
        "@UDHCPC@": UDHCPC_SCRIPT,
        "@POWEROFF_SCRIPT@": POWEROFF_SCRIPT,
    }
    for key, value in values.items():
        template = template.replace(key, value)
    return template
