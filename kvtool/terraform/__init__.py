"""Terraform for kvtool: a provider (kvtool.io/kvtool/kvtool), the external data source protocol,
and `run()` to drive Terraform from Python.

`run`, `outputs` and `Result` are imported on first use: the provider executable imports this
package too, and Terraform starts it several times per command.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Result", "outputs", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kvtool.terraform import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'kvtool.terraform' has no attribute {name!r}")
