"""`kvtool port-forward NAME [LOCAL:]REMOTE...`: relay local ports to a VM, pod or Service (kubectl-style)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from kvtool.cli import common
from kvtool.errors import KvtoolError

EPILOG = """\
NAME is a VM (NAME or vm/NAME: its launcher pod), pod/NAME or svc/NAME. Each port is LOCAL:REMOTE,
PORT (the same on both sides) or :REMOTE (a free local port). Runs until interrupted.
In an embedded cluster pod IPs live in the nodes' network namespaces; the relay connects from one
of them (it needs root, as the cluster does). `kubectl port-forward` works too (through the kubelet).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("target", metavar="NAME")
    parser.add_argument("ports", nargs="+", metavar="[LOCAL:]REMOTE")
    parser.add_argument("--address", default="127.0.0.1", help="local address to listen on (default 127.0.0.1)")
    parser.add_argument("-n", "--namespace", default="default")


def parse_ports(spec: str) -> tuple[int, int]:
    local, sep, remote = spec.rpartition(":")
    try:
        pair = (int(local) if local else 0, int(remote)) if sep else (int(spec), int(spec))
    except ValueError:
        raise KvtoolError(f"port {spec!r} is not LOCAL:REMOTE, PORT or :REMOTE") from None
    if not (0 <= pair[0] <= 65535 and 1 <= pair[1] <= 65535):
        raise KvtoolError(f"port {spec!r} is out of range")
    return pair


def run(args: argparse.Namespace) -> int:
    from kvtool.podnet import forward

    conn = common.connect(args)
    relays = []
    try:
        for spec in args.ports:
            local, remote = parse_ports(spec)
            target = forward.resolve(conn.res, args.namespace, args.target, remote)
            try:
                relay = forward.Relay(target, local, args.address)
            except OSError as exc:
                raise KvtoolError(f"cannot listen on {args.address}:{local}: {exc.strerror}") from None
            relays.append(relay.start())
            print(f"Forwarding from {args.address}:{relay.port} -> {target.ip}:{target.port} ({target.description})",
                  flush=True)
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        done.wait()
    finally:
        for relay in relays:
            relay.close()
    print("Stopped forwarding.", file=sys.stderr)
    return 0
