"""The embedded cluster's state file: written by the supervisor, read by everyone else.

One JSON document at $KVTOOL_HOME/cluster.json says which components run
with which PIDs and ports. Writes are atomic (write + rename), so a reader
never sees half a file; a file that does not parse means the state dir is
corrupt, and we say so instead of guessing.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kvtool import paths
from kvtool.errors import ConfigError

STATE_VERSION = 1


@dataclass
class ComponentState:
    name: str
    state: str = "pending"  # pending | starting | running | backoff | exited | stopped | failed
    pid: int | None = None
    port: int | None = None
    log: str = ""
    restarts: int = 0
    last_exit: str | None = None
    started_at: float | None = None


@dataclass
class ClusterState:
    home: str
    phase: str = "starting"  # starting | running | failed | stopping | stopped
    supervisor_pid: int | None = None
    error: str | None = None
    binary: str = ""
    server: str = ""
    nodes: list[str] = field(default_factory=list)
    progress: list[str] = field(default_factory=list)
    components: dict[str, ComponentState] = field(default_factory=dict)
    # Faults set by `kvtool cluster node stop|partition`: node -> "off" | "partitioned".
    node_faults: dict[str, str] = field(default_factory=dict)
    version: int = STATE_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterState:
        comps = {k: ComponentState(**v) for k, v in data.pop("components", {}).items()}
        return cls(components=comps, **data)


def state_path(home: Path) -> Path:
    return home / "cluster.json"


def read_state(home: Path) -> ClusterState | None:
    path = state_path(home)
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"state version {data.get('version')!r}, expected {STATE_VERSION}")
        return ClusterState.from_json(data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(
            f"the state dir {home} is corrupt: {path} is not a kvtool cluster state ({exc})",
            hint="run `kvtool cluster down --purge` to remove it and start afresh",
        ) from exc


def write_state(home: Path, state: ClusterState) -> None:
    paths.write_atomic(state_path(home), json.dumps(state.to_json(), indent=2))


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pid_environ_has(pid: int, key: str, value: str) -> bool:
    """True if process pid was started by us: it carries our marker in its environment."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{key}={value}".encode() in env


def lock_path(home: Path) -> Path:
    return home / "supervisor.lock"


def lock_held(home_or_layout: Path | object) -> bool:
    """True while a supervisor for this home is alive (it holds the lock for its lifetime)."""
    home = home_or_layout if isinstance(home_or_layout, Path) else home_or_layout.home  # type: ignore[attr-defined]
    path = lock_path(home)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def cluster_running(home: Path) -> bool:
    """The embedded cluster in home is up: its supervisor lives and says running."""
    if not lock_held(home):
        return False
    try:
        state = read_state(home)
    except ConfigError:
        return False
    return state is not None and state.phase == "running"
