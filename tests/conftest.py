"""Shared fixtures: one real embedded cluster per test session, in a temporary $KVTOOL_HOME.

Nothing here fakes Kubernetes: the fixture runs `kvtool cluster up` (real
etcd, apiserver, scheduler, controller-manager) and `down --purge` at the end,
and fails the session if any process of that cluster is left behind.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Never touch the user's own ~/.kvtool or clusters: every test session gets its own home.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="kvt-"))
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)  # failures print the logs they need
os.environ["KVTOOL_HOME"] = str(_SESSION_HOME / "home")
os.environ.pop("KUBECONFIG", None)
os.environ.setdefault("CHECKPOINT_DISABLE", "1")

KVTOOL = [sys.executable, "-m", "kvtool.cli.main"]


def kvtool(*args: str, env: dict[str, str] | None = None, check: bool = False, timeout: float = 600,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `kvtool` CLI in a subprocess, as a user would."""
    result = subprocess.run([*KVTOOL, *args], capture_output=True, text=True, timeout=timeout, input=input,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"kvtool {' '.join(args)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


@dataclass
class Cluster:
    home: Path
    kubeconfig: Path
    kubectl_path: Path
    images: Path  # the image store the nodes mount: the one of the environment the cluster came up in

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args],
                                capture_output=True, text=True, input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def api(self):
        from kvtool.kube import clients

        return clients.api_client(self.kubeconfig)


TINY_IMAGE = "tiny-linux"
DEBIAN_IMAGE = "debian-12"


@pytest.fixture(scope="session")
def tiny_image(cluster: Cluster) -> str:
    """The tiny-linux guest's image name; the session cluster built it."""
    return TINY_IMAGE


@pytest.fixture(scope="session")
def debian_image(cluster: Cluster) -> str:
    """The debian-12 cloud image's name, built into the machine's image store (cached by its recipe's hash)."""
    kvtool("image", "build", DEBIAN_IMAGE, check=True, timeout=1800)
    return DEBIAN_IMAGE


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    from kvtool.local import build
    from kvtool.local import cluster as local_cluster

    home = Path(os.environ["KVTOOL_HOME"])
    kvtool("cluster", "up", check=True, timeout=1800)
    # The guest every VM test boots, in the machine's image store before any test needs it (cached by content
    # hash: instant when built): tests must not depend on which of them happened to run first.
    kvtool("image", "build", TINY_IMAGE, check=True, timeout=900)
    binary = build.ensure_binary(progress=False)
    from kvtool.images import store

    yield Cluster(home=home, kubeconfig=home / "kubeconfig", kubectl_path=binary.parent / "kubectl",
                  images=store.default_root())
    if FAILED:
        dump_logs(home)
    kvtool("cluster", "down", "--purge", check=True)
    leftovers = local_cluster.leftover_processes(home)
    assert not leftovers, f"processes of the session cluster left behind: {leftovers}"


FAILED: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        FAILED.append(item.nodeid)


def dump_logs(home: Path, lines: int = 40) -> None:
    """After a failure, the tail of every component's log: CI keeps nothing else of the cluster."""
    logs = sorted((home / "logs").glob("*.log")) + sorted(home.glob("nodes/*/pod-logs/*/*/*.log"))
    out = sys.__stderr__  # past pytest's capture: a passing teardown's output would be dropped
    print(f"\n===== component logs of the session cluster ({len(FAILED)} failed test(s)) =====", file=out)
    for log in logs:
        try:
            tail = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        print(f"----- {log.relative_to(home)} -----", file=out)
        print("\n".join(tail), file=out)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that take the `cluster` fixture are marked, so `make unit` can skip them.
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)
