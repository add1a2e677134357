"""`kvtool console NAME`: the VM's serial console, interactive (Ctrl+] leaves) or `--tail` of its log."""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import sys

from kvtool import consoles
from kvtool.cli import common
from kvtool.launchercom.client import LauncherClient

ESCAPE = b"\x1d"  # Ctrl+], as virsh console


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--tail", nargs="?", const=0, type=int, metavar="LINES",
                        help="print the console log (the last LINES lines) instead of attaching")


def run(args: argparse.Namespace) -> int:
    conn = common.connect(args)
    if args.tail is not None:
        sys.stdout.buffer.write(consoles.tail(conn.res, args.namespace, args.name, args.tail))
        sys.stdout.flush()
        return 0
    sock = LauncherClient(consoles.launcher_socket(conn.res, args.namespace, args.name)).console()
    print(f"Connected to {args.namespace}/{args.name}. Escape character is ^]", file=sys.stderr)
    relay(sock)
    print("\nDisconnected.", file=sys.stderr)
    return 0


def relay(sock: socket.socket) -> None:
    """Copy stdin to the console and the console to stdout until ^] or the console closes."""
    stdin = sys.stdin.fileno()
    tty_state = None
    if os.isatty(stdin):
        import termios
        import tty

        tty_state = termios.tcgetattr(stdin)
        tty.setraw(stdin)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(stdin, selectors.EVENT_READ)
    try:
        while True:
            for key, _ in sel.select():
                if key.fileobj is sock:
                    data = sock.recv(65536)
                    if not data:
                        return
                    os.write(sys.stdout.fileno(), data)
                else:
                    data = os.read(stdin, 4096)
                    if not data:
                        sel.unregister(stdin)
                        continue
                    if ESCAPE in data:
                        sock.sendall(data.split(ESCAPE, 1)[0])
                        return
                    sock.sendall(data)
    finally:
        if tty_state is not None:
            import termios

            termios.tcsetattr(stdin, termios.TCSADRAIN, tty_state)
        sock.close()
