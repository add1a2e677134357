"""The migration proxy's throughput and CPU cost, next to its floor (issue 13's copy runs through it).

A live migration's bytes go: source QEMU -> unix socket -> source handler -> TLS over TCP -> target
handler -> unix socket -> target QEMU. This bench pushes --mib MiB of random bytes through a real
SourceProxy and TargetProxy, each in its own process as on two nodes, and measures MB/s and the two
proxies' CPU seconds. The floor is the same bytes over one unix socket (what `virsh migrate` between two
libvirtds on one machine uses). Each line: p50 over --runs.

Usage: python bench/migration_proxy.py [--mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvtool.handler.migration_proxy import SourceProxy, TargetProxy
from kvtool.kube import migrationtls

CHUNK = 1 << 20


def _target(pems: dict[str, str], sink: str, ports: multiprocessing.Queue) -> None:
    async def main() -> None:
        proxy = TargetProxy("bench", "127.0.0.1", {"migration": Path(sink)}, migrationtls.contexts(pems)[0])
        ports.put(await proxy.start())
        await asyncio.Event().wait()
    asyncio.run(main())


def _source(pems: dict[str, str], directory: str, ports: dict[str, int], ready: multiprocessing.Queue) -> None:
    async def main() -> None:
        proxy = SourceProxy("bench", Path(directory), "127.0.0.1", ports, migrationtls.contexts(pems)[1],
                            migrationtls.PEER_NAME)
        await proxy.start()
        ready.put(True)
        await asyncio.Event().wait()
    asyncio.run(main())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def push(entry: str, sink: socket.socket, size: int) -> tuple[float, int]:
    """Seconds to write `size` bytes into `entry` until the sink behind it has read them all; bytes read."""
    received = [0]

    def drain() -> None:
        conn, _ = sink.accept()
        buffer = bytearray(CHUNK)
        while got := conn.recv_into(buffer):
            received[0] += got
        conn.close()

    reader = threading.Thread(target=drain)
    reader.start()
    data = os.urandom(CHUNK)
    writer = socket.socket(socket.AF_UNIX)
    writer.connect(entry)
    started = time.perf_counter()
    for _ in range(size // CHUNK):
        writer.sendall(data)
    writer.shutdown(socket.SHUT_WR)
    reader.join()
    elapsed = time.perf_counter() - started
    writer.close()
    return elapsed, received[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.mib * CHUNK
    pems = migrationtls.make_material()
    with tempfile.TemporaryDirectory(prefix="kvtool-bench-proxy-") as tmp:
        sink_path = f"{tmp}/sink.sock"
        sink = socket.socket(socket.AF_UNIX)
        sink.bind(sink_path)
        sink.listen()
        queue: multiprocessing.Queue = multiprocessing.Queue()
        target = multiprocessing.Process(target=_target, args=(pems, sink_path, queue), daemon=True)
        target.start()
        ports = queue.get(timeout=30)
        source = multiprocessing.Process(target=_source, args=(pems, f"{tmp}/src", ports, queue), daemon=True)
        source.start()
        queue.get(timeout=30)
        proxied, floor = [], []
        try:
            for run in range(args.runs):
                cpu = cpu_seconds(target.pid) + cpu_seconds(source.pid)  # type: ignore[arg-type]
                seconds, got = push(f"{tmp}/src/migration.sock", sink, size)
                cpu = cpu_seconds(target.pid) + cpu_seconds(source.pid) - cpu  # type: ignore[arg-type]
                if got != size:
                    raise SystemExit(f"the proxy pair delivered {got} of {size} bytes")
                proxied.append((size / seconds / 1e6, cpu))
                seconds, got = push(sink_path, sink, size)
                floor.append((size / seconds / 1e6, 0.0))
                print(f"  run {run + 1}: proxy pair {proxied[-1][0]:.0f} MB/s, {cpu:.2f} CPU s; "
                      f"unix socket {floor[-1][0]:.0f} MB/s", flush=True)
        finally:
            target.kill()
            source.kill()
    rate = statistics.median(r for r, _ in proxied)
    cpu = statistics.median(c for _, c in proxied)
    floor_rate = statistics.median(r for r, _ in floor)
    print(f"\n{'path':<28} {'MB/s':>7} {'CPU s/GiB':>10}")
    print(f"{'kvtool proxy pair (TLS)':<28} {rate:>7.0f} {cpu / (size / (1 << 30)):>10.2f}")
    print(f"{'floor: one unix socket':<28} {floor_rate:>7.0f} {'-':>10}")
    print(f"floor / proxy: {floor_rate / rate:.1f}x the rate ({args.mib} MiB, p50 of {args.runs} runs)")


if __name__ == "__main__":
    main()
