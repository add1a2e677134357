"""The notebook widgets driven as a user drives them: set `.value`, call `.click()`.

The first half needs no cluster (form validation, rendering, the lab file,
the sync adapter); the second half runs the same clicks against the session's
real embedded cluster (preview, apply, a stale plan, destroy, the live table).
Nothing here mocks Kubernetes.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from pathlib import Path

import pytest
import yaml

from kvtool import consoles
from kvtool.api import schema
from kvtool.api.types import VIRTUAL_MACHINE
from kvtool.images import store
from kvtool.local.layout import Layout
from kvtool.notebook import (
    Classroom,
    ConsoleView,
    Lab,
    LabBuilder,
    LiveTable,
    Portal,
    VMForm,
    planview,
    render_html,
    status_frame,
)
from kvtool.notebook.frames import latency_rows
from kvtool.notebook.manifest import ImageChoice
from kvtool.plan import desired, planner
from kvtool.plan.model import SENSITIVE, Plan
from tests.conftest import Cluster, kvtool
from tests.vmfactory import vm

TINY = ImageChoice("tiny-linux", "kernel")
IMAGES = [TINY, ImageChoice("debian-12", "disk")]
SERVER = "https://127.0.0.1:6443"


def schema_message(rule_id: str) -> str:
    """A CEL rule's message as the schema files state it (the form must show the same words)."""
    text = json.dumps([schema.load(n) for n in schema.SCHEMA_FILES])
    for doc in json.loads(text):
        stack = [doc]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                for rule in node.get("x-kubernetes-validations", []):
                    if rule.get("x-kvtool-id") == rule_id:
                        return rule["message"]
                stack += list(node.values())
            elif isinstance(node, list):
                stack += node
    raise AssertionError(f"no rule {rule_id}")


def offline_plan(lab: Lab) -> Plan:
    """A plan against an empty cluster, without one (the planner's pure half)."""
    return planner.make_plan(lab.desired(), planner.LiveState(), SERVER)


# ---- the form ----------------------------------------------------------------------------------

def test_defaults_are_valid_and_build_what_the_schema_accepts() -> None:
    form = VMForm(images=IMAGES)
    assert form.valid and not form.add_button.disabled
    [doc] = form.manifests()
    assert doc["metadata"]["name"] == "lab"
    assert schema.validate(doc, "virtualmachine.json") == []
    boot = doc["spec"]["template"]["spec"]["domain"]["firmware"]["kernelBoot"]
    assert boot == {"container": {"image": "tiny-linux"}}  # the image's own kernelArgs


def test_name_is_checked_as_typed_with_the_schemas_message() -> None:
    form = VMForm(images=IMAGES)
    form.name.value = "Lab_1"
    message = schema_message("name-dns-label")
    assert message in form.errors["name"].value.replace("&#x27;", "'")
    assert not form.valid and form.add_button.disabled
    assert form.issues == {"name": [message]}
    form.name.value = "lab-1"
    assert form.valid and form.errors["name"].value == "" and not form.add_button.disabled


@pytest.mark.parametrize(("values", "field", "expected"), [
    ({"cpu": 0}, "cpu", "integer 0: minimum is 1"),
    ({"cpu": 65}, "cpu", "integer 65: maximum is 64"),
    ({"memory": "lots"}, "memory", "'lots' is not a Kubernetes quantity"),
    ({"memory": "1.2.3"}, "memory", "'1.2.3Mi' is not a Kubernetes quantity"),
    ({"memory": "0"}, "memory", schema_message("memory-minimum")),
    ({"count": 0}, "count", "count must be between 1 and 100"),
    ({"count": 101}, "count", "count must be between 1 and 100"),
    ({"node_selector": "disktype"}, "node_selector", "'disktype' is not key=value"),
    ({"node_selector": "a=" + "x" * 64}, "node_selector", "maxLength is 63"),
    ({"labels": "course=intro linux"}, "labels", "a label value is at most 63 characters"),
    ({"disks": [{"name": "data", "size": "lots"}]}, "disks", "'lots' is not a Kubernetes quantity"),
    ({"disks": [{"name": "Data", "size": "1Gi"}]}, "disks", "'Data' is not valid"),
    ({"disks": [{"name": "data", "size": "1Gi"}, {"name": "data", "size": "2Gi"}]}, "disks",
     "'data' is already used by disks[0]"),
    ({"name": "x" * 62, "count": 2}, "name", schema_message("name-dns-label")),
])
def test_bad_input_shows_the_message_next_to_the_field(values: dict, field: str, expected: str) -> None:
    form = VMForm(images=IMAGES)
    form.set(**values)
    assert any(expected in m for m in form.issues.get(field, [])), form.issues
    assert expected.replace("'", "&#x27;") in form.errors[field].value
    assert not form.valid and form.add_button.disabled
    with pytest.raises(ValueError, match=re.escape(expected)):
        form.manifests()


def test_count_names_and_disk_image() -> None:
    form = VMForm(images=IMAGES)
    form.set(name="lab", count=3)
    assert [d["metadata"]["name"] for d in form.manifests()] == ["lab-01", "lab-02", "lab-03"]
    assert "lab-01, lab-02, lab-03" in form.names_preview.value
    form.set(count=100)
    names = [d["metadata"]["name"] for d in form.manifests()]
    assert names[0] == "lab-001" and names[-1] == "lab-100"
    form.set(count=1, image="debian-12", memory="1", memory_unit="Gi",
             disks=[{"name": "data", "size": "2Gi"}, {"name": "home", "claim": "home-pvc"}])
    [doc] = form.manifests()
    tspec = doc["spec"]["template"]["spec"]
    assert "firmware" not in tspec["domain"] and tspec["domain"]["memory"] == {"guest": "1Gi"}
    assert tspec["volumes"] == [{"name": "root", "containerDisk": {"image": "debian-12"}},
                                {"name": "data", "emptyDisk": {"capacity": "2Gi"}},
                                {"name": "home", "persistentVolumeClaim": {"claimName": "home-pvc"}}]


def test_image_dropdown_comes_from_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVTOOL_IMAGES", str(tmp_path / "images"))
    form = VMForm()
    assert form.image.options == ()
    assert "kvtool image build tiny-linux" in form.errors["image"].value and not form.valid
    images = store.ImageStore()
    with images.staging() as staged:
        (staged / "vmlinuz").write_bytes(b"kernel")
        (staged / "initrd.img").write_bytes(b"initrd")
        images.add("alpha", staged, kind="kernel", kernel="vmlinuz", initrd="initrd.img", cmdline="console=ttyS0")
    with images.staging() as staged:
        (staged / "disk.qcow2").write_bytes(b"QFI\xfb")
        images.add("beta", staged, kind="disk", disk="disk.qcow2", format="qcow2")
    form = VMForm()
    assert form.image.options == (("alpha (kernel, store)", "alpha"), ("beta (disk, store)", "beta"))
    assert form.valid
    form.image.value = "beta"
    [doc] = form.manifests()
    assert doc["spec"]["template"]["spec"]["volumes"][0]["containerDisk"]["image"] == "beta"


def test_user_data_is_never_echoed() -> None:
    secret = "hunter2-" + "x" * 40_000
    builder = LabBuilder("lab", images=IMAGES)
    builder.form.set(user_data=secret)
    assert builder.form.issues["user_data"] == [f"string {SENSITIVE}: maxLength is 32768"]
    assert "hunter2" not in builder.form.errors["user_data"].value
    secret = "#!/bin/sh\necho hunter2\n"
    builder.add(user_data=secret, count=2, name="s")
    assert builder.form.user_data.value == "", "the textarea forgets the secret once added"
    assert "hunter2" not in builder.table.value and "set (hidden)" in builder.table.value
    plan = offline_plan(builder.lab)
    html = render_html(plan)
    assert "hunter2" not in html and SENSITIVE in html
    assert planview.secrets(plan) == {secret}, "what PlanView masks in server messages"
    assert builder.lab.secrets() == [secret, secret]


# ---- the lab, its file, the plan view ----------------------------------------------------------

def test_lab_saves_what_the_cli_reads_and_loads_it_back(tmp_path: Path) -> None:
    builder = LabBuilder("class-7", images=IMAGES)
    builder.add(name="lab", count=2, labels="course=intro-linux", user_data="#!/bin/sh\necho hi\n")
    builder.path.value = str(tmp_path / "class-7.yaml")
    builder.save_button.click()
    assert "Saved 2 object(s)" in builder.message.value
    saved = tmp_path / "class-7.yaml"
    result = kvtool("validate", str(saved), "--stack", "class-7", check=True)
    assert "Valid: 2 object(s)" in result.stdout
    docs = list(yaml.safe_load_all(saved.read_text()))
    assert [d["metadata"]["name"] for d in docs] == ["lab-01", "lab-02"]

    other = LabBuilder("class-7", images=IMAGES)
    other.path.value = str(saved)
    other.load_button.click()
    assert other.lab.documents == builder.lab.documents
    assert "lab-02" in other.table.value and other.select.options == ("lab-01", "lab-02")
    other.form.count.value = 2
    assert "lab-01, lab-02 are already in this lab" in other.form.errors["name"].value
    assert other.form.add_button.disabled

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(vm("Bad_Name")))
    other.path.value = str(tmp_path / "bad.yaml")
    other.load_button.click()
    assert "bad.yaml, document 1 at metadata.name" in other.message.value
    assert other.lab.names() == ["lab-01", "lab-02"], "a refused file changes nothing"
    other.select.value = ("lab-01",)
    other.remove_button.click()
    assert other.lab.names() == ["lab-02"]


def test_render_html_is_colour_coded_escaped_and_summarised() -> None:
    live = {**vm("keep", cores=1), "metadata": {"name": "keep", "namespace": "default", "resourceVersion": "7",
                                                 "labels": {"kvtool.io/stack": "s",
                                                            "app.kubernetes.io/managed-by": "kvtool"}}}
    gone = {**vm("gone"), "metadata": {**live["metadata"], "name": "gone"}}
    state = desired.load(objects=[vm("keep", cores=2), vm("new", labels={"note": "a-b"})], stack="s")
    plan = planner.make_plan(state, planner.LiveState(members={
        planner.key_of(VIRTUAL_MACHINE, live): live, planner.key_of(VIRTUAL_MACHINE, gone): gone}), SERVER)
    html = render_html(plan)
    assert "Plan: 1 to add, 1 to change, 1 to destroy." in html
    assert html.count("kvt-action-create") == 1 and html.count("kvt-action-update") == 1
    assert html.count("kvt-action-delete") == 1
    assert "#e6ffec" in html and "#fff8c5" in html and "#ffebe9" in html
    assert "spec.template.spec.domain.cpu.cores" in html and "<code>1</code>" in html and "→ <code>2</code>" in html
    assert "no longer in the desired state" in html
    plan.stack = "<script>alert(1)</script>"
    assert "<script>" not in render_html(plan) and "&lt;script&gt;" in render_html(plan)


def test_invalid_form_or_a_changed_lab_disables_apply() -> None:
    builder = LabBuilder("lab", images=IMAGES)
    builder.add(name="web", count=2)
    builder.show_plan(offline_plan(builder.lab))
    apply_button = builder.plan_view.apply_button
    assert not apply_button.disabled
    builder.form.name.value = "Web!"
    assert apply_button.disabled and "invalid input" in (builder.plan_view.blocked or "")
    builder.form.name.value = "db"
    assert not apply_button.disabled
    builder.add()  # the lab changed after the preview: its plan no longer says what Apply would do
    assert apply_button.disabled and "preview again" in (builder.plan_view.blocked or "")
    builder.show_plan(offline_plan(builder.lab))
    assert not apply_button.disabled
    builder.stack.value = "Not A Stack"
    assert apply_button.disabled and builder.preview_button.disabled
    assert "DNS-1123" in builder.stack_error.value


# ---- the sync adapter --------------------------------------------------------------------------

def test_portal_without_a_loop_runs_updates_at_once() -> None:
    portal = Portal()
    seen: list[str] = []
    portal.call(seen.append, "now")
    errors: list[BaseException] = []
    portal.submit(lambda: seen.append("worker"))
    portal.submit(lambda: 1 / 0, on_error=errors.append)
    portal.wait_idle(10)
    assert seen == ["now", "worker"] and isinstance(errors[0], ZeroDivisionError)


def test_portal_inside_a_running_loop_hands_updates_to_the_loop_thread() -> None:
    """What Jupyter has: a running asyncio loop on the main thread, work on worker threads."""
    threads: list[int] = []
    order: list[int] = []

    async def main() -> None:
        portal = Portal()
        assert portal.on_loop

        def work() -> None:
            for i in range(50):
                portal.call(lambda i=i: (threads.append(threading.get_ident()), order.append(i)))

        fut = portal.submit(work)
        while not fut.done() or len(order) < 50:
            await asyncio.sleep(0.01)  # the loop runs the queued updates
        # A cell that blocks the loop still sees updates: pause() drains them.
        portal.submit(lambda: portal.call(order.append, 99))
        portal.wait_idle(10)
        assert order[-1] == 99

    asyncio.run(main())
    assert set(threads) == {threading.get_ident()} and order[:50] == list(range(50))


def test_latency_rows_from_vmi_timestamps() -> None:
    vmi = {"metadata": {"name": "a", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z",
                        "labels": {"kvtool.io/stack": "s"}},
           "status": {"phase": "Running", "nodeName": "n1", "phaseTransitionTimestamps": [
               {"phase": "Pending", "phaseTransitionTimestamp": "2026-01-01T00:00:00.20Z"},
               {"phase": "Scheduled", "phaseTransitionTimestamp": "2026-01-01T00:00:01.50Z"},
               {"phase": "Running", "phaseTransitionTimestamp": "2026-01-01T00:00:04.25Z"}]}}
    [row] = latency_rows([vmi])
    assert (row["stack"], row["node"], row["pending_s"], row["scheduled_s"]) == ("s", "n1", 0.2, 1.5)
    assert row["running_s"] == row["start_latency_s"] == 4.25 and row["scheduling_s"] is None
    [halted] = latency_rows([{"metadata": {"name": "b", "creationTimestamp": "2026-01-01T00:00:00Z"}}])
    assert halted["start_latency_s"] is None


def test_console_socket_dir_matches_the_embedded_layout(tmp_path: Path) -> None:
    assert consoles.node_sockets_dir("kvtool-node-1", tmp_path) == Layout(tmp_path).node_sockets("kvtool-node-1")


KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ada@laptop")


def classroom_template(run_strategy: str = "Halted", name: str = "lab") -> list[dict]:
    return [vm(name, run_strategy=run_strategy, memory="96Mi")]


def upload(room: Classroom, name: str, text: str) -> None:
    """What the browser's file input hands the FileUpload widget (ipywidgets 8: a tuple of dicts)."""
    import datetime as dt

    room.upload.value = ({"name": name, "type": "text/csv", "size": len(text), "content": memoryview(text.encode()),
                          "last_modified": dt.datetime.now(dt.UTC)},)


def test_classroom_reads_an_uploaded_roster_and_says_what_is_wrong_by_row() -> None:
    room = Classroom("os101", classroom_template(), start=False)
    assert room.preview_button.disabled, "nothing to plan before a roster"
    upload(room, "class.csv", "name,ssh_key\nAda,\nbob,not-a-key\n")
    shown = room.roster_view.value
    assert "kvt-roster-error" in shown and "class.csv" in shown
    assert "row 2, column name: &#x27;Ada&#x27; is not a login name" in shown, shown
    assert "row 3, column ssh_key" in shown and room.preview_button.disabled
    upload(room, "class.csv", f"\ufeffname,ssh_key,group\nada,{KEY},a\nbob,,b\n")
    shown = room.roster_view.value
    assert "2 student(s) from class.csv" in shown and "key (ssh-ed25519)" in shown
    assert "password (kvtool lab passwords)" in shown and ">b<" in shown
    assert not room.preview_button.disabled and room.roster is not None and room.roster.names() == ["ada", "bob"]


def test_classroom_refuses_a_template_without_a_vm_or_with_a_bad_one() -> None:
    from kvtool.errors import KvtoolError

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"a": "b"}}
    with pytest.raises(KvtoolError, match="no VirtualMachine to make once per student"):
        Classroom("os101", [secret], start=False)
    with pytest.raises(desired.InvalidInput, match=r"metadata\.name"):
        Classroom("os101", [vm("Bad_Name")], start=False)


# ---- against the real cluster ------------------------------------------------------------------

@pytest.fixture
def stack(cluster: Cluster):
    name = f"nb-{uuid.uuid4().hex[:8]}"
    yield name
    kvtool("destroy", "--stack", name, "--auto-approve")


def cluster_names(cluster: Cluster, stack: str) -> list[str]:
    out = cluster.kubectl("get", "vms", "-A", "-l", f"kvtool.io/stack={stack}", "-o", "json").stdout
    return sorted(i["metadata"]["name"] for i in json.loads(out)["items"])


def test_click_through_preview_apply_and_destroy(cluster: Cluster, stack: str) -> None:
    builder = LabBuilder(stack, images=IMAGES)
    live = LiveTable(stack=stack)
    try:
        builder.form.set(name="web", count=2, run_strategy="Halted", user_data="#!/bin/sh\necho hi\n")
        builder.form.add_button.click()
        builder.preview_button.click()
        builder.portal.wait_idle(60)
        assert "Plan: 2 to add, 0 to change, 0 to destroy." in builder.plan_view.html.value
        assert cluster_names(cluster, stack) == [], "a preview changes nothing"
        builder.plan_view.apply_button.click()
        builder.portal.wait_idle(120)
        view = builder.plan_view
        assert "Apply complete! Resources: 2 added, 0 changed, 0 destroyed." in view.message.value
        assert (view.progress.value, view.progress.max, view.progress.bar_style) == (2, 2, "success")
        assert view.apply_button.disabled, "an applied plan is spent"
        assert cluster_names(cluster, stack) == ["web-01", "web-02"]

        frame = live.wait_for(lambda df: len(df) == 2, timeout=60, what="two rows")
        assert list(frame["name"]) == ["web-01", "web-02"] and set(frame["status"]) == {"Stopped"}
        assert len(live.out.outputs) == 1 and "web-02" in live.out.outputs[0]["data"]["text/html"]
        assert live.names == ["web-01", "web-02"]

        view.destroy_button.click()
        builder.portal.wait_idle(60)
        assert view.confirm_box.layout.display == "flex"
        assert "2 to destroy" in view.html.value and cluster_names(cluster, stack) == ["web-01", "web-02"]
        view.confirm_button.click()
        builder.portal.wait_idle(120)
        assert "Destroy complete!" in view.message.value
        live.wait_for(lambda df: df.empty, timeout=60, what="no rows")
        assert "No VMs" in live.out.outputs[0]["data"]["text/html"]
    finally:
        live.stop()


def test_a_stale_plan_is_refused_not_replanned(cluster: Cluster, stack: str, tmp_path: Path) -> None:
    builder = LabBuilder(stack, images=IMAGES)
    builder.add(name="a", run_strategy="Halted")
    builder.preview()
    # Behind the preview's back, someone else adds a VM to the stack.
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(vm("intruder")))
    kvtool("apply", "-f", str(other), "--stack", stack, "--auto-approve", check=True)
    builder.plan_view.apply_button.click()
    builder.portal.wait_idle(60)
    message = builder.plan_view.message.value
    assert "Nothing was applied" in message and "joined the stack since the plan" in message
    assert "Preview the plan again" in message
    assert cluster_names(cluster, stack) == ["intruder"], "the stale plan was not applied, nor a new one"
    assert builder.plan_view.apply_button.disabled
    plan = builder.preview()
    assert plan.summary_line() == "Plan: 1 to add, 0 to change, 1 to destroy."
    assert not builder.plan_view.apply_button.disabled


def test_live_table_filters_by_label_and_status_frame(cluster: Cluster, stack: str) -> None:
    lab = Lab(stack)
    lab.add(vm("red", labels={"team": "red"}), vm("blue", labels={"team": "blue"}))
    result = lab.apply(lab.plan())
    assert result.ok, result.report()
    live = LiveTable(stack=stack, labels={"team": "red"})
    try:
        assert list(live.wait_for(lambda df: len(df) == 1, timeout=60)["name"]) == ["red"]
        live.label_filter.value = "team=blue"
        live.filter_button.click()
        assert list(live.wait_for(lambda df: list(df["name"]) == ["blue"], timeout=60)["name"]) == ["blue"]
        live.label_filter.value = "team"
        live.filter_button.click()
        assert "not key=value" in live.status.value
    finally:
        live.stop()
    df = status_frame(stack)
    assert list(df["name"]) == ["blue", "red"] and set(df["status"]) == {"Stopped"}
    assert {"name", "status", "phase", "node", "ip", "cpu", "memory", "age"} <= set(df.columns)


def test_console_view_says_why_a_stopped_vm_has_no_console(cluster: Cluster, stack: str) -> None:
    lab = Lab(stack)
    lab.add(vm("quiet"))
    assert lab.apply(lab.plan()).ok
    view = ConsoleView(namespace="default")
    view.vm.value = "quiet"
    with pytest.raises(Exception, match="is not running"):
        view.tail()
    assert "is not running" in view.message.value


def test_classroom_plans_one_vm_per_student_shows_time_left_extends_and_resets(cluster: Cluster, stack: str) -> None:
    room = Classroom(stack, classroom_template("Always", stack), ttl="2h", refresh=1.0)
    try:
        room.load_roster(f"name,ssh_key\nada,{KEY}\nbob,\n".encode(), name="class.csv")
        room.preview_button.click()
        room.portal.wait_idle(60)
        view = room.plan_view
        assert "Plan: 3 to add, 0 to change, 0 to destroy." in view.html.value, view.html.value + room.message.value
        view.apply_button.click()
        room.portal.wait_idle(120)
        assert "Apply complete!" in view.message.value, view.message.value
        frame = room.live.wait_for(lambda df: len(df) == 2 and df["ready"].all(), timeout=300,
                                   what="both students' VMs running")
        assert list(frame["student"]) == ["ada", "bob"] and list(frame["name"]) == [f"{stack}-ada", f"{stack}-bob"]
        assert all(e.startswith(("1h59m", "1h58m", "2h")) for e in frame["expires"]), frame["expires"]
        assert "expires" in room.live.out.outputs[0]["data"]["text/html"]
        # The table redraws by the clock with no event: a second later it says so.
        drawn = room.live.updated_at
        room.live.wait_for(lambda df: room.live.updated_at != drawn, timeout=10, what="a redraw by the timer")

        # A second preview of the same roster keeps bob's password: nothing to change.
        room.preview_button.click()
        room.portal.wait_idle(60)
        assert "No changes." in view.html.value or "no changes" in view.html.value.lower(), view.html.value

        room.extend_by.value = "1h"
        room.extend_button.click()
        room.portal.wait_idle(60)
        assert "Extended 2 VM(s) by 1h" in room.message.value, room.message.value
        room.live.wait_for(lambda df: all(e.startswith(("2h59m", "2h58m", "3h")) for e in df["expires"]),
                           timeout=30, what="the new time left")

        uids = {n: cluster.kubectl("get", "vmi", n, "-o", "jsonpath={.metadata.uid}").stdout
                for n in (f"{stack}-ada", f"{stack}-bob")}
        room.reset_button.click()
        room.portal.wait_idle(60)
        assert room.reset_box.layout.display == "flex" and f"{stack}-ada, {stack}-bob" in room.reset_question.value
        room.reset_cancel.click()
        assert room.reset_box.layout.display == "none" and "nothing was restarted" in room.message.value
        room.reset_button.click()
        room.portal.wait_idle(60)
        room.reset_confirm.click()
        room.portal.wait_idle(600)  # the reset returns once the VMs run again
        assert f"{stack}-ada: restarting from its images" in room.message.value, room.message.value
        assert "All 2 running VM(s) run again from their images." in room.message.value
        for name, uid in uids.items():
            wait_for_new_vmi(cluster, name, uid)
    finally:
        room.live.stop()


def wait_for_new_vmi(cluster: Cluster, name: str, old_uid: str) -> None:
    from tests.waiting import wait_for

    def fresh() -> bool:
        got = cluster.kubectl("get", "vmi", name, "-o", "json", check=False)
        if got.returncode != 0:
            return False
        vmi = json.loads(got.stdout)
        return vmi["metadata"]["uid"] != old_uid and (vmi.get("status") or {}).get("phase") == "Running"
    wait_for(fresh, timeout=300, what=f"{name} to run again as a new VMI after the reset")
