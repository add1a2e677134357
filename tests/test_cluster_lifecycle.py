"""`kvtool cluster` start-up, failure and shutdown paths, each on its own temporary home."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from kvtool import paths
from kvtool.local import cluster as local_cluster
from tests.conftest import kvtool
from tests.waiting import wait_for


def _pid(home: Path, component: str) -> int:
    return json.loads((home / "cluster.json").read_text())["components"][component]["pid"]


@pytest.fixture
def home(tmp_path: Path):
    h = tmp_path / "home"
    yield h
    local_cluster.down(h, purge=True, quiet=True)
    assert not local_cluster.leftover_processes(h)


def test_lifecycle_kill_stale_restart_and_down(home: Path) -> None:
    env = {"KVTOOL_HOME": str(home)}
    kvtool("cluster", "up", "--nodes", "0", env=env, check=True, timeout=1800)

    # A killed apiserver is reported by status (and restarted by the supervisor).
    os.kill(_pid(home, "apiserver"), signal.SIGKILL)

    def reported() -> subprocess.CompletedProcess[str] | None:
        status = kvtool("cluster", "status", env=env)
        line = next(ln for ln in status.stdout.splitlines() if ln.startswith("apiserver"))
        return status if "killed by SIGKILL" in line else None

    status = wait_for(reported, timeout=10, what="status reporting the killed apiserver")
    assert status.returncode == 1, "status must fail while the apiserver is down"

    # A crashed supervisor leaves a stale cluster; `up` cleans it up and starts afresh.
    sup = json.loads((home / "cluster.json").read_text())["supervisor_pid"]
    os.kill(sup, signal.SIGKILL)
    wait_for(lambda: not local_cluster.lock_held(home), timeout=10, what="the dead supervisor's lock released")
    assert "stale" in kvtool("cluster", "status", env=env).stdout
    up = kvtool("cluster", "up", "--nodes", "0", env=env, check=True)
    assert "Cleaning up a stale cluster" in up.stderr
    assert kvtool("cluster", "status", env=env).returncode == 0

    kvtool("cluster", "down", env=env, check=True)
    assert local_cluster.leftover_processes(home) == []
    assert (home / "etcd").is_dir(), "plain down keeps the data"
    kvtool("cluster", "down", "--purge", env=env, check=True)
    assert not home.exists()


def test_corrupt_state_file_is_a_clear_error(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "cluster.json").write_text("{not json")
    result = kvtool("cluster", "up", env={"KVTOOL_HOME": str(home)})
    assert result.returncode == 1
    assert "is corrupt" in result.stderr and "down --purge" in result.stderr
    assert "Traceback" not in result.stderr


def test_component_exiting_early_shows_its_log(home: Path) -> None:
    # A real etcd refusing a damaged data dir: the error names the component and quotes its log.
    (home / "etcd" / "member" / "snap").mkdir(parents=True)
    (home / "etcd" / "member" / "snap" / "db").write_bytes(b"this is not a bbolt database" * 100)
    result = kvtool("cluster", "up", "--nodes", "0", env={"KVTOOL_HOME": str(home)}, timeout=1800)
    assert result.returncode == 1, result.stderr
    assert "etcd exited during start-up" in result.stderr or "etcd did not become ready" in result.stderr
    assert "last lines of" in result.stderr and "etcd.log" in result.stderr
    assert "Traceback" not in result.stderr
    assert local_cluster.leftover_processes(home) == []


def test_port_clash_is_a_clear_error(home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        result = kvtool("cluster", "up", "--port", str(port), env={"KVTOOL_HOME": str(home)})
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "already in use" in result.stderr


def test_go_build_failure_is_a_clear_error(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "controlplane"
    shutil.copytree(paths.source_root() / "controlplane", src)
    (src / "go.mod").write_text((src / "go.mod").read_text().replace("module kvtool.io/controlplane",
                                                                      "module kvtool.io/controlplane\nbogus line"))
    result = kvtool("cluster", "up", env={"KVTOOL_HOME": str(home), "KVTOOL_CONTROLPLANE_SRC": str(src),
                                          "KVTOOL_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 1
    assert "`go build` of kvtool-controlplane failed" in result.stderr
    assert "go.mod" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
