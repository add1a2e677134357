"""The node's cache of libvirt's QEMU capability probe: keyed as libvirt validates it, bounded in size."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kvtool.launcher import libvirtd


def test_a_binary_whose_change_time_moved_gets_another_stamp(tmp_path: Path) -> None:
    # Each node unpacks the launcher image itself: same bytes and mtime, another ctime. libvirt re-probes
    # when <selfctime>/<qemuctime> differ, so nodes sharing one cache must not share one key.
    binary = tmp_path / "libvirtd"
    binary.write_bytes(b"same bytes")
    before = libvirtd._stamp(str(binary))
    time.sleep(0.01)
    os.chmod(binary, 0o700)  # changes the ctime only
    assert libvirtd._stamp(str(binary)) != before


def test_the_key_is_stable_for_unchanged_binaries(tmp_path: Path) -> None:
    first = libvirtd._node_cache_dir(tmp_path)
    assert first is not None and first.parent == tmp_path / libvirtd.NODE_CACHE_SUBDIR
    assert libvirtd._node_cache_dir(tmp_path) == first


def test_pruning_keeps_the_current_key_and_the_most_recent_others(tmp_path: Path) -> None:
    parent = tmp_path / libvirtd.NODE_CACHE_SUBDIR
    dirs = []
    for i in range(6):
        d = parent / f"key{i}"
        d.mkdir(parents=True)
        os.utime(d, (1000 + i, 1000 + i))
        dirs.append(d)
    current = dirs[0]  # the oldest, but in use
    removed = libvirtd.prune_node_cache(current, limit=2)
    assert sorted(p.name for p in parent.iterdir()) == ["key0", "key4", "key5"]
    assert sorted(p.name for p in removed) == ["key1", "key2", "key3"]


def test_tuning_for_tcg_drops_only_the_slow_flag() -> None:
    caps = (b"<qemuCaps>\n  <flag name='sdl'/>\n  <flag name='cpu-unavailable-features'/>\n"
            b"  <flag name='query-cpu-model-expansion'/>\n</qemuCaps>\n")
    assert libvirtd.tune_for_tcg(caps) == (b"<qemuCaps>\n  <flag name='sdl'/>\n"
                                           b"  <flag name='query-cpu-model-expansion'/>\n</qemuCaps>\n")
    assert libvirtd.tune_for_tcg(b"<qemuCaps/>\n") == b"<qemuCaps/>\n"
