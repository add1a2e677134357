"""Errors users see. Each carries a message and, where we know one, a hint.

The CLI maps these to exit codes in one place (kvtool.cli.main); library code
raises them instead of printing, so notebooks and the Terraform provider can
render the same message their own way.
"""

from __future__ import annotations


class KvtoolError(Exception):
    """A failure the user can act on: no traceback, a message and a hint."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(KvtoolError):
    """Kubeconfig, state dir or environment problems."""


class ClusterError(KvtoolError):
    """The embedded cluster failed to start, stop or answer."""


class BuildError(KvtoolError):
    """Building the control-plane binary failed."""
