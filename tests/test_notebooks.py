"""Every notebook under notebooks/ runs top to bottom with nbclient against the session's embedded cluster.

The notebooks connect with kvtool's normal kubeconfig resolution; conftest
points KVTOOL_HOME at the session cluster, so they need no edits. They are
stored clean (no outputs), which is checked here too. The lab notebook is
the end-to-end run: its VMs boot real tiny-linux guests.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

from tests.browser_helpers import isolated_env
from tests.conftest import Cluster, kvtool
from tests.vmfactory import vm

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(path: Path, workdir: Path, timeout: int = 900,
            parameters: Mapping[str, Any] | None = None) -> nbformat.NotebookNode:
    """Run a notebook in a fresh kernel, with Jupyter's own dirs isolated under workdir; `parameters` replace
    the values of the `NAME = value` lines of its "# Parameters" cell, as a user would edit them."""
    nb = nbformat.read(path, as_version=4)
    if parameters:
        cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("# Parameters"))
        for name, value in parameters.items():
            cell.source, found = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", cell.source, flags=re.M)
            assert found == 1, f"{path.name} has no parameter {name}"
    env = isolated_env(workdir / "jupyter")
    # nbclient waits only 4 s (iopub_timeout) after a cell's reply for its outputs, then drops what is late
    # with a warning: on a loaded 2-core machine a cell's printed line went missing that way. Wait longer, and
    # fail loudly rather than check a notebook whose outputs are incomplete.
    NotebookClient(nb, timeout=timeout, kernel_name="python3", iopub_timeout=60, raise_on_iopub_timeout=True,
                   resources={"metadata": {"path": str(workdir)}}).execute(env=env)
    return nb


def text_of(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)


def images_of(nb: nbformat.NotebookNode) -> int:
    return sum(1 for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {}))


def stack_vms(cluster: Cluster, stack: str) -> list[str]:
    out = cluster.kubectl("get", "vms", "-A", "-l", f"kvtool.io/stack={stack}", "-o", "json").stdout
    return sorted(i["metadata"]["name"] for i in json.loads(out)["items"])


# ---- one runner per notebook: what it needs first, and what its outputs must show ---------------

def run_lab_provisioning(cluster: Cluster, tmp_path: Path) -> None:
    assert stack_vms(cluster, "class-101") == [] and stack_vms(cluster, "class-101-roster") == []
    try:
        nb = execute(NOTEBOOKS / "lab_provisioning.ipynb", tmp_path)
    finally:
        kvtool("destroy", "--stack", "class-101", "--auto-approve")
        kvtool("destroy", "--stack", "class-101-roster", "--auto-approve")
    text = text_of(nb)
    assert "Plan: 3 to add, 0 to change, 0 to destroy." in text
    assert "Applied: virtualmachine default/lab-01, virtualmachine default/lab-02, virtualmachine default/lab-03" \
        in text
    assert "welcome to the lab" in text, "the first VM's console shows its user data ran"
    assert "Stack 'class-101' is empty again." in text
    assert "'welcome to the lab'" not in text, "the user data itself is never printed"
    assert stack_vms(cluster, "class-101") == []
    # Section 5, a class from a roster: a VM and a login Secret per student, reset, torn down.
    assert "Plan: 4 to add, 0 to change, 0 to destroy." in text
    assert "class-101-ada: restarting from its images" in text and "class-101-grace" in text
    assert "Stack 'class-101-roster' is empty again." in text
    assert stack_vms(cluster, "class-101-roster") == []


@contextmanager
def inspected_stack(cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    """A stack with one running VM (so the latency plot has a bar) and one stopped VM."""
    stack = f"insp-{uuid.uuid4().hex[:6]}"
    f = tmp_path / "vms.yaml"
    f.write_text(yaml.safe_dump_all([vm(f"{stack}-up", run_strategy="Always"), vm(f"{stack}-off")]))
    kvtool("apply", "-f", str(f), "--stack", stack, "--auto-approve", "--wait", "--timeout", "300", check=True)
    try:
        yield stack
    finally:
        kvtool("destroy", "--stack", stack, "--auto-approve")


def run_inspect_cluster(cluster: Cluster, tmp_path: Path) -> None:
    with inspected_stack(cluster, tmp_path) as stack:
        nb = execute(NOTEBOOKS / "inspect_cluster.ipynb", tmp_path)
    text = text_of(nb)
    assert f"{stack}-up" in text and f"{stack}-off" in text
    assert "kvtool-node-1" in text and "kvtool-node-2" in text, "the node table lists every node"
    assert "start_latency_s" in text and images_of(nb) == 1, "the latency plot"
    latency = next(o["data"]["text/plain"] for c in nb.cells if "start_latency_frame(" in c.source
                   for o in c.outputs if "data" in o)
    assert f"{stack}-up" in latency, "the running VM's VMI has start timestamps"


RUNS: dict[str, Callable[[Cluster, Path], Any]] = {
    "lab_provisioning.ipynb": run_lab_provisioning,
    "inspect_cluster.ipynb": run_inspect_cluster,
}


def test_every_notebook_is_run_here() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(RUNS), \
        "a notebook under notebooks/ without a run in tests/test_notebooks.py (add one to RUNS)"


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_is_stored_clean(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: commit it without outputs"
    assert "widgets" not in nb.metadata, f"{name}: widget state is an output too"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", sorted(RUNS))
def test_notebook_runs_top_to_bottom(cluster: Cluster, tmp_path: Path, name: str) -> None:
    RUNS[name](cluster, tmp_path)
