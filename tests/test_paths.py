"""paths.write_atomic: every state, key, config and cache file kvtool writes goes through it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvtool import paths


def test_write_atomic_replaces_whole_files_with_the_mode_asked_for(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)  # a umask must not narrow an executable or a shared file
    try:
        script = paths.write_atomic(tmp_path / "bin" / "tool", "#!/bin/sh\n", 0o755)
        key = paths.write_atomic(tmp_path / "key.pem", b"secret", 0o600)
    finally:
        os.umask(old_umask)
    assert (script.stat().st_mode & 0o777, script.read_text()) == (0o755, "#!/bin/sh\n")
    assert (key.stat().st_mode & 0o777, key.read_bytes()) == (0o600, b"secret")
    paths.write_atomic(key, b"newer", 0o600)
    assert key.read_bytes() == b"newer"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bin", "key.pem", "tool"]  # no temporary left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = paths.write_atomic(tmp_path / "state.json", "{}")
    with pytest.raises(TypeError):
        paths.write_atomic(target, 42)  # type: ignore[arg-type]
    assert target.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
