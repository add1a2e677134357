"""Kubeconfig resolution order: --kubeconfig > $KUBECONFIG > embedded cluster if up > ~/.kube/config."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from kvtool.clusterstate import STATE_VERSION
from kvtool.errors import ConfigError
from kvtool.kube import config


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("KVTOOL_HOME", str(tmp_path / "kvhome"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    (tmp_path / "user").mkdir()
    return tmp_path


def _write(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("apiVersion: v1\nkind: Config\n")
    return path


def _fake_running_embedded(home: Path):
    home.mkdir(parents=True, exist_ok=True)
    _write(home / "kubeconfig")
    (home / "cluster.json").write_text(json.dumps({"version": STATE_VERSION, "home": str(home),
                                                   "phase": "running"}))
    fd = os.open(home / "supervisor.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_nothing_found_is_one_clear_sentence(env: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        config.resolve()
    assert "kvtool cluster up" in str(exc.value) and "--kubeconfig" in str(exc.value)


def test_order(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_default = _write(env / "user" / ".kube" / "config")
    assert config.resolve().path == str(user_default)

    fd = _fake_running_embedded(env / "kvhome")
    try:
        r = config.resolve()
        assert r.path == str(env / "kvhome" / "kubeconfig") and "embedded" in r.source

        from_env = _write(env / "envconfig")
        monkeypatch.setenv("KUBECONFIG", str(from_env))
        assert config.resolve().path == str(from_env)

        flag = _write(env / "flagconfig")
        r = config.resolve(str(flag))
        assert r.path == str(flag) and r.source == "--kubeconfig"
    finally:
        os.close(fd)
    # The lock released: the embedded cluster no longer counts as up.
    monkeypatch.delenv("KUBECONFIG")
    assert config.resolve().path == str(user_default)


def test_missing_flag_file(env: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.resolve(str(env / "nope"))


def test_kubeconfig_env_pointing_nowhere(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(env / "missing"))
    with pytest.raises(ConfigError, match="KUBECONFIG"):
        config.resolve()
