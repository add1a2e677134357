"""The lab builder in a real browser: Voila serving a notebook, Debian's headless Chromium driving it.

Fill the form (with a bad name first: the schema's message shows and Apply is
disabled), add, preview, apply, and see the new VMs' rows appear in the live
table; then destroy through the confirmation step. Screenshots go to the
test's tmp dir (KVTOOL_UPDATE_SCREENSHOTS=1 also refreshes docs/notebook-lab.png).
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import nbformat
import pytest

from tests import browser_helpers as bh
from tests.conftest import Cluster, kvtool

ROOT = Path(__file__).resolve().parent.parent
DOCS_SCREENSHOT = ROOT / "docs" / "notebook-lab.png"
SECRET = "s3cret-never-shown"


def app_notebook(path: Path, stack: str) -> Path:
    """What a Voila app for a lab looks like: the builder and the live table, nothing else."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from kvtool.notebook import LabBuilder, LiveTable\n"
        f"builder = LabBuilder(stack={stack!r})\n"
        f"live = LiveTable(stack={stack!r})\n"
        "display(builder, live)")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)
    return path


def vm_names(cluster: Cluster, stack: str) -> list[str]:
    out = cluster.kubectl("get", "vms", "-A", "-l", f"kvtool.io/stack={stack}", "-o", "json").stdout
    return sorted(i["metadata"]["name"] for i in json.loads(out)["items"])


@pytest.fixture
def voila(cluster: Cluster, tmp_path: Path):
    bh.require_browser()
    stack = f"web-{uuid.uuid4().hex[:6]}"
    nb = app_notebook(tmp_path / "lab_app.ipynb", stack)
    port = bh.free_port()
    argv = [str(bh.VENV_BIN / "voila"), nb.name, "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
            "--show_tracebacks=True"]
    env = bh.isolated_env(tmp_path / "jupyter")
    with bh.server(argv, env, f"http://127.0.0.1:{port}/", tmp_path / "voila.log", cwd=tmp_path):
        yield f"http://127.0.0.1:{port}/", stack
    kvtool("destroy", "--stack", stack, "--auto-approve")


def test_lab_builder_in_voila(cluster: Cluster, voila: tuple[str, str], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    url, stack = voila
    with bh.chromium_page(viewport=(1280, 1400)) as page:
        page.set_default_timeout(120_000)
        page.goto(url)
        name = page.locator(".kvt-form-name input")
        expect(name).to_be_visible(timeout=180_000)
        # The image dropdown is filled from the image store.
        expect(page.locator(".kvt-form-image select")).to_contain_text("tiny-linux")

        # Bad input: the schema's message next to the field; Add and Apply disabled.
        name.fill("Web_1")
        expect(page.locator(".kvt-error-name")).to_contain_text("metadata.name must be a DNS-1123 label")
        expect(page.locator(".kvt-form-add")).to_be_disabled()
        expect(page.locator(".kvt-apply")).to_be_disabled()
        page.screenshot(path=str(tmp_path / "1-invalid-name.png"), full_page=True)

        name.fill("web")
        expect(page.locator(".kvt-error-name")).to_be_empty()
        page.locator(".kvt-form-count input").fill("2")
        page.locator(".kvt-form-count input").press("Tab")
        page.locator(".kvt-form-run-strategy select").select_option("Halted")
        page.locator(".kvt-form-user-data textarea").fill(f"#!/bin/sh\necho {SECRET}\n")
        expect(page.locator(".kvt-form-names")).to_contain_text("web-01, web-02")
        expect(page.locator(".kvt-form-add")).to_be_enabled()
        page.locator(".kvt-form-add").click()

        # The lab lists both VMs; the user data is gone from the form and shown nowhere.
        expect(page.locator(".kvt-lab-list")).to_contain_text("web-02")
        expect(page.locator(".kvt-form-user-data textarea")).to_have_value("")

        page.locator(".kvt-preview").click()
        plan = page.locator(".kvt-plan")
        expect(plan).to_contain_text("Plan: 2 to add, 0 to change, 0 to destroy.")
        expect(page.locator(".kvt-plan .kvt-action-create")).to_have_count(2)
        plan.locator("summary").first.click()
        expect(plan).to_contain_text("(sensitive value)")
        assert SECRET not in page.content()
        plan.locator("summary").first.click()  # folded again, for the screenshot

        expect(page.locator(".kvt-apply")).to_be_enabled()
        page.locator(".kvt-apply").click()
        expect(page.locator(".kvt-message")).to_contain_text("Apply complete! Resources: 2 added")
        expect(page.locator(".kvt-progress")).to_be_visible()

        # The live table (a watch, not polling) shows the new VMs with their status.
        table = page.locator(".kvt-live-table")
        for vm in ("web-01", "web-02"):
            expect(table.locator("tr", has_text=vm)).to_contain_text("Stopped")
        assert vm_names(cluster, stack) == ["web-01", "web-02"]
        assert SECRET not in page.content()
        shot = tmp_path / "2-applied.png"
        page.screenshot(path=str(shot), full_page=True)
        bh.copy_screenshot(shot, DOCS_SCREENSHOT)

        # Destroy asks first; confirming removes the rows.
        page.locator(".kvt-destroy").click()
        expect(page.locator(".kvt-destroy-confirm")).to_be_visible()
        expect(page.locator(".kvt-plan")).to_contain_text("Plan: 0 to add, 0 to change, 2 to destroy.")
        assert vm_names(cluster, stack) == ["web-01", "web-02"], "nothing is deleted before the confirmation"
        page.locator(".kvt-destroy-confirm").click()
        expect(page.locator(".kvt-message")).to_contain_text("Destroy complete!")
        expect(table).to_contain_text("No VMs")
        page.screenshot(path=str(tmp_path / "3-destroyed.png"), full_page=True)
    assert vm_names(cluster, stack) == []
    print(f"screenshots in {tmp_path}", file=sys.stderr)


def test_inspect_notebook_in_jupyterlab(cluster: Cluster, tmp_path: Path) -> None:
    """What `make notebook` opens: JupyterLab, Run All on a copy of inspect_cluster.ipynb, live table and plot."""
    from playwright.sync_api import expect

    from tests.test_notebooks import NOTEBOOKS, inspected_stack

    bh.require_browser()
    work = tmp_path / "notebooks"
    work.mkdir()
    # A copy: JupyterLab autosaves, and the committed notebooks stay without outputs.
    (work / "inspect_cluster.ipynb").write_bytes((NOTEBOOKS / "inspect_cluster.ipynb").read_bytes())
    port = bh.free_port()
    argv = [str(bh.VENV_BIN / "jupyter-lab"), "--no-browser", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.root_dir={work}", "--IdentityProvider.token=", "--ServerApp.password=",
            "--LabApp.expose_app_in_browser=True", "--allow-root"]
    env = bh.isolated_env(tmp_path / "jupyter")
    with inspected_stack(cluster, tmp_path) as stack, \
            bh.server(argv, env, f"http://127.0.0.1:{port}/lab", tmp_path / "lab.log", cwd=work), \
            bh.chromium_page(viewport=(1400, 1800)) as page:
        page.set_default_timeout(120_000)
        page.goto(f"http://127.0.0.1:{port}/lab/tree/inspect_cluster.ipynb")
        # The DOM's idle indicator fires before the kernel is ready: ask the app itself.
        page.wait_for_function("""() => {
            const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
            const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
            return k && k.status === 'idle';
        }""", timeout=180_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        table = page.locator(".kvt-live-table")
        expect(table.locator("tr", has_text=f"{stack}-up")).to_contain_text("Running", timeout=180_000)
        expect(table.locator("tr", has_text=f"{stack}-off")).to_contain_text("Stopped")
        expect(page.locator(".jp-OutputArea-output img").first).to_be_visible(timeout=120_000)
        page.screenshot(path=str(tmp_path / "jupyterlab.png"))


ROSTER = "name,group\nada,a\nbob,b\n"


def classroom_notebook(path: Path, stack: str, template: Path) -> Path:
    """A Voila app for a class: the Classroom widget alone, on a tiny-linux template."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from kvtool.notebook import Classroom\n"
        f"room = Classroom({stack!r}, {str(template)!r}, ttl='2h', refresh=5)\n"
        "display(room)")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)
    return path


def test_classroom_roster_upload_and_reset_in_voila(cluster: Cluster, tmp_path: Path) -> None:
    """Issue 15, part 7: the class list uploaded through Chromium's file chooser, one VM per student, the time
    left in the table, and Reset… asking before it restarts anything."""
    import yaml
    from playwright.sync_api import expect

    from tests.vmfactory import vm

    bh.require_browser()
    stack = f"room-{uuid.uuid4().hex[:6]}"
    template = tmp_path / "template.yaml"
    template.write_text(yaml.safe_dump(vm(stack, memory="96Mi", run_strategy="Always")))  # VMs <stack>-<login>
    roster = tmp_path / "class.csv"
    roster.write_text(ROSTER)
    bad = tmp_path / "bad.csv"
    bad.write_text("login\nada\n")
    nb = classroom_notebook(tmp_path / "room.ipynb", stack, template)
    port = bh.free_port()
    argv = [str(bh.VENV_BIN / "voila"), nb.name, "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
            "--show_tracebacks=True"]
    env = bh.isolated_env(tmp_path / "jupyter")
    try:
        with bh.server(argv, env, f"http://127.0.0.1:{port}/", tmp_path / "voila.log", cwd=tmp_path), \
                bh.chromium_page(viewport=(1280, 1800)) as page:
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}/")
            expect(page.locator(".kvt-roster-preview")).to_be_disabled(timeout=180_000)

            def choose(path: Path) -> None:
                """Click the upload button and pick the file in the browser's file chooser, as a user does."""
                with page.expect_file_chooser() as chooser:
                    page.locator(".kvt-roster-upload").click()
                chooser.value.set_files(str(path))

            # A roster without a name column: said, and nothing to preview.
            choose(bad)
            expect(page.locator(".kvt-roster")).to_contain_text("there is no `name` column (found: login)")
            expect(page.locator(".kvt-roster-preview")).to_be_disabled()

            choose(roster)
            expect(page.locator(".kvt-roster")).to_contain_text("2 student(s) from class.csv")
            page.locator(".kvt-roster-preview").click()
            expect(page.locator(".kvt-plan")).to_contain_text("Plan: 4 to add, 0 to change, 0 to destroy.")
            page.locator(".kvt-apply").click()
            expect(page.locator(".kvt-message")).to_contain_text("Apply complete! Resources: 4 added")

            table = page.locator(".kvt-live-table")
            for student in ("ada", "bob"):
                row = table.locator("tr", has_text=f"{stack}-{student}")
                expect(row).to_contain_text("Running", timeout=300_000)
                expect(row).to_contain_text("1h5")  # the time left (1h5xm), from the 2h limit
            page.screenshot(path=str(tmp_path / "1-class-running.png"), full_page=True)
            old = {n: cluster.kubectl("get", "vmi", n, "-o", "jsonpath={.metadata.uid}").stdout
                   for n in (f"{stack}-ada", f"{stack}-bob")}

            # Reset… asks first and names the VMs; nothing restarts before the confirmation.
            page.locator(".kvt-lab-reset").click()
            expect(page.locator(".kvt-lab-reset-box")).to_contain_text("Reset 2 VM(s) to their start?")
            for name, uid in old.items():
                assert cluster.kubectl("get", "vmi", name, "-o", "jsonpath={.metadata.uid}").stdout == uid
            page.locator(".kvt-lab-reset-confirm").click()
            expect(page.locator(".kvt-classroom-message")).to_contain_text(f"{stack}-bob: restarting from its images")
            expect(page.locator(".kvt-classroom-message")).to_contain_text("All 2 running VM(s) run again",
                                                                           timeout=300_000)
            expect(page.locator(".kvt-lab-reset-box")).to_be_hidden()
            page.screenshot(path=str(tmp_path / "2-reset.png"), full_page=True)
        for name, uid in old.items():
            from tests.test_notebook_widgets import wait_for_new_vmi
            wait_for_new_vmi(cluster, name, uid)
    finally:
        kvtool("destroy", "--stack", stack, "--auto-approve")
