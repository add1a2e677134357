"""kvtool.api.builder: the one way the provider and the notebook forms make a VM manifest."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvtool.api import builder, schema
from kvtool.api.builder import SpecError, parse_virtual_machine, virtual_machine
from kvtool.plan import desired
from tests.vmfactory import KERNEL_ARGS, vm


def valid(manifest: dict) -> dict:
    issues = schema.validate(manifest, "virtualmachine.json")
    assert issues == [], issues
    return manifest


def test_kernel_image_boots_from_kernel_boot() -> None:
    m = valid(virtual_machine("lab-1", image="tiny-linux", run_strategy="Halted"))
    tspec = m["spec"]["template"]["spec"]
    assert tspec["domain"]["firmware"] == {"kernelBoot": {"container": {"image": "tiny-linux"}}}
    assert tspec["domain"]["devices"]["disks"] == []
    assert "volumes" not in tspec
    assert m["metadata"] == {"name": "lab-1", "namespace": "default"}
    assert m["spec"]["runStrategy"] == "Halted"


def test_disk_image_is_a_container_disk_root() -> None:
    m = valid(virtual_machine("web", image="quay.io/containerdisks/debian:12", cpu=2, memory="1Gi"))
    tspec = m["spec"]["template"]["spec"]
    assert "firmware" not in tspec["domain"]
    assert tspec["domain"]["devices"]["disks"][0] == {"name": "root", "disk": {"bus": "virtio"}}
    assert tspec["volumes"][0] == {"name": "root", "containerDisk": {"image": "quay.io/containerdisks/debian:12"}}
    assert tspec["domain"]["cpu"] == {"cores": 2} and tspec["domain"]["memory"] == {"guest": "1Gi"}


def test_the_store_decides_the_kind() -> None:
    m = virtual_machine("k", image="my-kernel", image_kind="kernel")
    assert m["spec"]["template"]["spec"]["domain"]["firmware"]["kernelBoot"]["container"]["image"] == "my-kernel"
    m = virtual_machine("d", image="tiny-linux", image_kind="disk")
    assert m["spec"]["template"]["spec"]["volumes"][0]["containerDisk"]["image"] == "tiny-linux"


def test_disks_user_data_selector_and_labels() -> None:
    m = valid(virtual_machine(
        "db", namespace="lab", image="tiny-linux", kernel_args="console=ttyS0",
        disks=[{"name": "data", "size": "2Gi"}, {"name": "iso", "image": "tools", "bus": "sata"},
               {"name": "pg", "claim": "pg-data"}],
        user_data="#cloud-config\n", node_selector={"kvtool.io/node": "n1"}, labels={"team": "db"}, stack="s1"))
    tspec = m["spec"]["template"]["spec"]
    assert [d["name"] for d in tspec["domain"]["devices"]["disks"]] == ["data", "iso", "pg", "cloudinit"]
    assert tspec["domain"]["devices"]["disks"][1] == {"name": "iso", "disk": {"bus": "sata"}}
    assert tspec["volumes"] == [
        {"name": "data", "emptyDisk": {"capacity": "2Gi"}},
        {"name": "iso", "containerDisk": {"image": "tools"}},
        {"name": "pg", "persistentVolumeClaim": {"claimName": "pg-data"}},
        {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#cloud-config\n"}},
    ]
    assert tspec["nodeSelector"] == {"kvtool.io/node": "n1"}
    assert tspec["domain"]["firmware"]["kernelBoot"]["kernelArgs"] == "console=ttyS0"
    assert m["metadata"]["labels"] == {"team": "db", "app.kubernetes.io/managed-by": "kvtool",
                                       "kvtool.io/stack": "s1"}


def test_same_manifest_as_a_hand_written_one() -> None:
    """What the builder makes is what a user writes by hand (tests/vmfactory.py), once kvtool loads both."""
    built = virtual_machine("vm-1", image="tiny-linux", kernel_args=f"{KERNEL_ARGS} kvtool.hostname=vm-1",
                            run_strategy="Halted", cpu=2, memory="256Mi")
    by_hand = vm("vm-1", cores=2, memory="256Mi")
    loaded = desired.load(objects=[built, by_hand | {"metadata": {"name": "vm-2"}}], stack="s")
    a, b = (o.manifest for o in loaded.objects)
    b["metadata"]["name"] = "vm-1"
    assert a == b


@pytest.mark.parametrize(("kwargs", "path", "words"), [
    ({"disks": [{"name": "d", "sise": "1Gi"}]}, "disks[0].sise", "did you mean 'size'?"),
    ({"disks": [{"name": "d"}]}, "disks[0]", "exactly one of image, size and claim (found none)"),
    ({"disks": [{"name": "d", "size": "1Gi", "claim": "c"}]}, "disks[0]", "found size and claim"),
    ({"disks": [{"size": "1Gi"}]}, "disks[0].name", "needs a name"),
    ({"image": "debian", "disks": [{"name": "root", "size": "1Gi"}]}, "disks[0].name", "already used by image"),
    ({"user_data": "x", "disks": [{"name": "cloudinit", "size": "1Gi"}]}, "disks[0].name", "used by user_data"),
    ({"disks": [{"name": "a", "size": "1Gi"}, {"name": "a", "size": "1Gi"}]}, "disks[1].name", "used by disks[0]"),
    ({"disks": ["data"]}, "disks[0]", "expected a mapping"),
    ({"image": "debian", "kernel_args": "quiet"}, "kernel_args", "only a kernel image"),
    ({"image": "x", "image_kind": "iso"}, "image_kind", "not one of: kernel, disk"),
])
def test_arguments_it_cannot_place_are_refused_with_their_path(kwargs: dict, path: str, words: str) -> None:
    with pytest.raises(SpecError) as err:
        virtual_machine("vm", **kwargs)
    assert err.value.path == path
    assert words in err.value.message


def test_bad_values_are_left_to_the_schema() -> None:
    m = virtual_machine("vm", image="tiny-linux", memory="lots", cpu=0, run_strategy="Sometimes")
    paths = {i.path for i in schema.validate(m, "virtualmachine.json")}
    assert {"spec.template.spec.domain.memory.guest", "spec.template.spec.domain.cpu.cores",
            "spec.runStrategy"} <= paths


names = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
label_values = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)


@st.composite
def arguments(draw: st.DrawFn) -> dict:
    image = draw(st.none() | st.sampled_from(["tiny-linux", "debian-12", "quay.io/x/y:1"]))
    disk_names = draw(st.lists(names.filter(lambda n: n not in ("root", "cloudinit")), max_size=3, unique=True))
    disks = []
    for name in disk_names:
        source = draw(st.sampled_from(builder.DISK_SOURCES))
        value = {"image": "img", "size": "1Gi", "claim": "pvc"}[source]
        disk = {"name": name, source: value}
        if draw(st.booleans()):
            disk["bus"] = draw(st.sampled_from(["sata", "scsi"]))
        disks.append(disk)
    return {
        "name": draw(names), "namespace": draw(names), "cpu": draw(st.integers(1, 8)),
        "memory": draw(st.sampled_from(["128Mi", "1Gi", 268435456])), "image": image,
        "image_kind": builder.image_kind(image) if image else None,
        "kernel_args": draw(st.none() | st.just("console=ttyS0")) if image == "tiny-linux" else None,
        "disks": disks, "user_data": draw(st.none() | st.text(max_size=20)),
        "run_strategy": draw(st.sampled_from(builder.RUN_STRATEGIES)),
        "node_selector": draw(st.dictionaries(names, label_values, max_size=2)),
        "labels": draw(st.dictionaries(names, label_values, max_size=2)),
        "stack": draw(st.none() | names),
    }


@settings(max_examples=200, deadline=None)
@given(arguments())
def test_parse_inverts_build(args: dict) -> None:
    manifest = virtual_machine(args.pop("name"), **{k: v for k, v in args.items()})
    valid(manifest)
    parsed = parse_virtual_machine(manifest)
    assert parsed.pop("name") == manifest["metadata"]["name"]
    assert parsed == args
