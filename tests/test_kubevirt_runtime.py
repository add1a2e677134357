"""KubeVirt on the embedded cluster. kvtool running KubeVirt's documents (tests/kubevirt/): planned, applied and
booted; the guest sees what the fields asked for (SMBIOS serial and chassis, 4 KiB sectors, the RNG, its SSH
key in the cloud-init seed, EFI firmware); the launcher pod carries the pod-level fields and the probes; a
readiness probe decides Ready; startStrategy Paused; the API server refuses an unsupported field by name.
And kvtool driving KubeVirt's own API (--api kubevirt, the Terraform provider's api, Lab(api=...)) against
KubeVirt's real CRDs, which also accept every manifest of tests/kubevirt/."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import Cluster, kvtool
from tests.runtime_helpers import condition, describe_vm, get, wait_for, wait_running
from tests.terraform_helpers import TerraformEnv, provider_block, terraform_env, vm_block
from tests.vmfactory import vm

MANIFESTS = Path(__file__).parent / "kubevirt"
STACK = "kubevirt"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvtoolTestKeyNotARealKey0000000000000000 kv@kvtool-test"


def console(name: str) -> str:
    return kvtool("console", name, "--tail").stdout


def console_with(name: str, marker: str) -> str | None:
    """The console log once `marker` is in it, else None (for wait_for)."""
    text = console(name)
    return text if marker in text else None


def vmi_running(cluster: Cluster, name: str) -> dict:
    return wait_for(lambda: (v := get(cluster, "vmi", name)) and (v.get("status") or {}).get("phase") == "Running"
                    and v, timeout=240, what=f"VMI {name} Running", describe=describe_vm(cluster, name))


def launcher_pod(cluster: Cluster, name: str) -> dict:
    pods = json.loads(cluster.kubectl("get", "pods", "-l", f"kvtool.io/vmi={name}", "-o", "json").stdout)["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 1, [p["metadata"]["name"] for p in pods]
    return live[0]


def test_kubevirt_manifests_apply_boot_and_the_guest_sees_the_fields(cluster: Cluster, tiny_image: str,
                                                                     tmp_path: Path) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "kvtool-test-high"},
         "value": 1000}))
    secret = tmp_path / "secret.yaml"
    secret.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kv-every-field-keys"},
                                      "stringData": {"key1": SSH_KEY}}))
    files = ["-f", str(MANIFESTS), "-f", str(secret)]
    plan = kvtool("plan", *files, "--stack", STACK, check=True).stdout
    assert plan.count("Read 3 KubeVirt document(s)") == 1, plan
    assert "kvtool.io/v1alpha1 VirtualMachine kv-efi" in plan or "kv-efi" in plan
    kvtool("apply", *files, "--stack", STACK, "--auto-approve", check=True)
    try:
        every = wait_running(cluster, "kv-every-field", timeout=240)
        efi = wait_running(cluster, "kv-efi", timeout=240)
        text = wait_for(lambda: console_with("kv-every-field", "KV-EVERY-FIELD-UP"), timeout=120,
                        what="kv-every-field's user data to finish")
        for marker in ("KV-RNG-PRESENT", "KV-SERIAL-SEEN", "KV-CHASSIS-SEEN", "KV-BLOCK-4096", "KV-KEY-IN-SEED",
                       "KVTOOL-GUEST-CLOUDINIT instance-id=kv-every-field.default local-hostname=every"):
            assert marker in text, f"{marker} on kv-every-field's console:\n{text[-3000:]}"
        efi_text = wait_for(lambda: console_with("kv-efi", "KV-EFI-UP"), timeout=120,
                            what="kv-efi's user data to finish")
        assert "KV-BOOTED-EFI" in efi_text and "efi: EFI v" in efi_text, efi_text[-3000:]
        assert every["status"]["interfaces"][0]["name"] == "Default_Net", "KubeVirt's interface name rules"
        assert efi["metadata"]["labels"]["special"] == "kv-efi"

        pod = launcher_pod(cluster, "kv-every-field")
        spec = pod["spec"]
        assert (spec["priorityClassName"], spec["priority"], spec["hostname"], spec["subdomain"]) == (
            "kvtool-test-high", 1000, "every", "lab")
        assert spec["dnsConfig"]["searches"] == ["lab.example"] and spec["topologySpreadConstraints"]
        compute = spec["containers"][0]
        assert compute["readinessProbe"]["tcpSocket"] == {"port": 80}
        assert compute["livenessProbe"]["httpGet"]["path"] == "/"
        # The kubelet's probe reaches the guest's port 80 through masquerade: the VMI is Ready because it passes.
        wait_for(lambda: condition(get(cluster, "vmi", "kv-every-field"), "Ready").get("reason") == "GuestReady",
                 timeout=120, what="the readiness probe to make kv-every-field Ready",
                 describe=describe_vm(cluster, "kv-every-field"))
        assert condition(get(cluster, "vm", "kv-every-field"), "Ready")["status"] == "True"
        again = kvtool("plan", *files, "--stack", STACK, "--detailed-exitcode")
        assert again.returncode == 0, f"converted documents plan no changes once applied:\n{again.stdout}"
    finally:
        kvtool("destroy", "--stack", STACK, "--auto-approve", check=True)
        cluster.kubectl("delete", "priorityclass", "kvtool-test-high", "--ignore-not-found", check=False)


def test_a_failing_readiness_probe_keeps_the_vmi_not_ready(cluster: Cluster, tiny_image: str,
                                                           tmp_path: Path) -> None:
    name = f"kv-probe-{uuid.uuid4().hex[:4]}"
    doc = vm(name, run_strategy="Always")
    doc["spec"]["template"]["spec"]["readinessProbe"] = {"tcpSocket": {"port": 81}, "periodSeconds": 1}
    f = tmp_path / "vm.yaml"
    f.write_text(yaml.safe_dump(doc))
    kvtool("apply", "-f", str(f), "--stack", STACK, "--auto-approve", check=True)
    try:
        vmi_running(cluster, name)
        ready = wait_for(lambda: (c := condition(get(cluster, "vmi", name), "Ready")).get("reason") == "GuestNotReady"
                         and c, timeout=120, what="the failing probe to show", describe=describe_vm(cluster, name))
        assert ready["status"] == "False" and "readiness probe does not pass" in ready["message"]
        status = kvtool("status", "--stack", STACK, check=True).stdout
        assert name in status
    finally:
        kvtool("destroy", "--stack", STACK, "--auto-approve", check=True)


def test_start_strategy_paused_starts_paused_until_unpaused(cluster: Cluster, tiny_image: str,
                                                           tmp_path: Path) -> None:
    name = f"kv-paused-{uuid.uuid4().hex[:4]}"
    doc = vm(name, run_strategy="Always")
    doc["spec"]["template"]["spec"]["startStrategy"] = "Paused"
    f = tmp_path / "vm.yaml"
    f.write_text(yaml.safe_dump(doc))
    kvtool("apply", "-f", str(f), "--stack", STACK, "--auto-approve", check=True)
    try:
        wait_for(lambda: condition(get(cluster, "vmi", name), "Paused").get("status") == "True", timeout=240,
                 what="the VMI to start paused", describe=describe_vm(cluster, name))
        assert "KVTOOL-GUEST-READY" not in console(name), "a paused guest never ran"
        kvtool("unpause", name, check=True)
        wait_for(lambda: "KVTOOL-GUEST-READY" in console(name), timeout=120, what="the unpaused guest to boot")
        assert condition(get(cluster, "vmi", name), "Paused").get("status") == "False"
    finally:
        kvtool("destroy", "--stack", STACK, "--auto-approve", check=True)


def test_api_kubevirt_without_kubevirts_api_is_a_clear_error(cluster: Cluster, tmp_path: Path) -> None:
    f = tmp_path / "vm.yaml"
    f.write_text(yaml.safe_dump(vm("kv-none")))
    result = kvtool("plan", "-f", str(f), "--stack", "kv-none", "--api", "kubevirt")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "this cluster does not serve kubevirt.io/v1" in result.stderr and "install-crds --kubevirt" in \
        result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_api_server_refuses_an_unsupported_field_by_name(cluster: Cluster) -> None:
    doc = vm("kv-gpu")
    doc["spec"]["template"]["spec"]["domain"]["devices"]["gpus"] = [{"name": "g", "deviceName": "nvidia.com/GPU"}]
    result = cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert result.returncode != 0
    assert "spec.template.spec.domain.devices.gpus" in result.stderr, result.stderr
    assert "kvtool does not support this KubeVirt field: GPUs are host devices" in result.stderr, result.stderr


@pytest.fixture
def kubevirt_crds(cluster: Cluster, tmp_path: Path) -> Iterator[list[str]]:
    """KubeVirt's real VM/VMI CRDs (from its Go module) for one test: kubectl arguments with a discovery cache of
    its own, so that `vm` keeps meaning kvtool's VirtualMachine for every other test."""
    cache = ["--cache-dir", str(tmp_path / "kubectl-cache")]
    installed = kvtool("install-crds", "--kubevirt", check=True, timeout=600).stdout
    assert "virtualmachines.kubevirt.io established" in installed, installed
    assert "virtualmachineinstances.kubevirt.io established" in installed, installed
    try:
        yield cache
    finally:
        cluster.kubectl(*cache, "delete", "crd", "virtualmachines.kubevirt.io", "virtualmachineinstances.kubevirt.io",
                        "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def tfenv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TerraformEnv]:
    with terraform_env(tmp_path_factory.mktemp("terraform-kubevirt")) as env:
        yield env


def kubevirt_vm(cluster: Cluster, cache: list[str], name: str) -> dict | None:
    result = cluster.kubectl(*cache, "get", "virtualmachines.kubevirt.io", name, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def test_kubevirt_as_the_target_plan_apply_drift_status_destroy(cluster: Cluster, kubevirt_crds: list[str],
                                                                tmp_path: Path) -> None:
    from kvtool.api.types import KVTOOL
    from kvtool.kube.resources import Resources, target_for

    res = Resources(cluster.api())
    assert res.serves("kubevirt.io/v1") and res.serves("kvtool.io/v1alpha1") and not res.serves("nosuch.example/v1")
    assert target_for(res, "auto") is KVTOOL, "auto prefers kvtool's API where the cluster serves both"
    cache, stack = kubevirt_crds, f"kvt-{uuid.uuid4().hex[:4]}"
    files = ["-f", str(MANIFESTS / "vmi-v1alpha3-secureboot.yaml"), "--stack", stack, "--api", "kubevirt"]
    plan = kvtool("plan", *files, "--detailed-exitcode")
    assert plan.returncode == 2 and "Planning for kubevirt.io/v1" in plan.stdout, plan.stdout + plan.stderr
    kvtool("apply", *files, "--auto-approve", check=True)
    try:
        made = kubevirt_vm(cluster, cache, "kv-secureboot")
        assert made and made["apiVersion"] == "kubevirt.io/v1", made
        assert made["spec"]["runStrategy"] == "Halted"
        assert made["spec"]["template"]["metadata"]["labels"]["kvtool.io/stack"] == stack, "VMIs find their stack"
        assert kubevirt_vm(cluster, cache, "kv-secureboot") and get(cluster, "vm", "kv-secureboot") is None, \
            "KubeVirt's object, not kvtool's"
        assert kvtool("plan", *files, "--detailed-exitcode").returncode == 0, "applied: nothing to do"
        cluster.kubectl(*cache, "patch", "virtualmachines.kubevirt.io", "kv-secureboot", "--type=merge",
                        "--field-manager=someone-else", "-p", '{"spec":{"template":{"spec":{"domain":'
                        '{"memory":{"guest":"512Mi"}}}}}}')
        drift = kvtool("plan", *files, "--detailed-exitcode")
        assert drift.returncode == 2 and 'memory.guest = "512Mi" -> "256Mi"' in drift.stdout, drift.stdout
        rows = json.loads(kvtool("status", "--stack", stack, "--api", "kubevirt", "-o", "json", check=True).stdout)
        assert [r["name"] for r in rows] == ["kv-secureboot"], rows
        verb = kvtool("start", "kv-secureboot", "--api", "kubevirt")
        assert verb.returncode == 1 and "does not serve KubeVirt's subresources" in verb.stderr, verb.stderr
    finally:
        kvtool("destroy", "--stack", stack, "--api", "kubevirt", "--auto-approve", check=True)
    assert kubevirt_vm(cluster, cache, "kv-secureboot") is None


def test_kubevirt_as_the_target_from_terraform_and_the_notebook_lab(cluster: Cluster, kubevirt_crds: list[str],
                                                                    tfenv: TerraformEnv) -> None:
    from kvtool.notebook.lab import Lab
    from kvtool.notebook.session import connect

    cache, stack = kubevirt_crds, f"kvt-{uuid.uuid4().hex[:4]}"
    wd = tfenv.workdir(stack)
    wd.write(provider_block(stack, api="kubevirt") + vm_block("one", f"{stack}-tf", run_strategy="Halted"))
    wd.tf("init")
    applied = wd.tf("apply")
    assert "Apply complete! Resources: 1 added" in applied.stdout, applied.output
    made = kubevirt_vm(cluster, cache, f"{stack}-tf")
    assert made and made["metadata"]["labels"]["kvtool.io/stack"] == stack, made
    assert wd.tf("plan", "-detailed-exitcode").returncode == 0, "a second plan has nothing to do"
    wd.tf("destroy")
    assert kubevirt_vm(cluster, cache, f"{stack}-tf") is None

    lab = Lab(f"{stack}-nb", api="kubevirt")
    lab.add(vm(f"{stack}-nb", run_strategy="Halted"))
    conn = connect()
    result = lab.apply(lab.plan(conn), conn)
    assert result.ok, result.report()
    assert kubevirt_vm(cluster, cache, f"{stack}-nb") is not None
    assert not lab.plan(conn).has_changes
    assert lab.apply(lab.destroy_plan(conn), conn).ok
    assert kubevirt_vm(cluster, cache, f"{stack}-nb") is None


def test_our_kubevirt_manifests_pass_kubevirts_own_crds(cluster: Cluster, kubevirt_crds: list[str]) -> None:
    """The manifests above are KubeVirt's, not merely kvtool-shaped: KubeVirt's real CRD schemas accept them."""
    cache = kubevirt_crds
    for manifest in sorted(MANIFESTS.glob("*.yaml")):
        result = cluster.kubectl(*cache, "apply", "--dry-run=server", "-f", str(manifest), check=False)
        assert result.returncode == 0, f"KubeVirt's CRDs refuse {manifest.name}: {result.stderr}"
    wrong = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "kv-wrong"},
             "spec": {"runStrategy": "Always",
                      "template": {"spec": {"domain": {"cpu": {"cores": "two"}, "devices": {}}}}}}
    refused = cluster.kubectl(*cache, "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(wrong),
                              check=False)
    assert refused.returncode != 0 and "cores" in refused.stderr, "the CRDs do validate"


def test_the_lab_notebook_drives_kubevirts_api(cluster: Cluster, kubevirt_crds: list[str], tmp_path: Path) -> None:
    """notebooks/lab_provisioning.ipynb top to bottom with API = "kubevirt": its VMs are KubeVirt's."""
    from tests.test_notebooks import NOTEBOOKS, execute, text_of

    cache, stack = kubevirt_crds, f"kvnb-{uuid.uuid4().hex[:4]}"
    try:
        nb = execute(NOTEBOOKS / "lab_provisioning.ipynb", tmp_path,
                     parameters={"STACK": stack, "RUN_STRATEGY": "Halted", "API": "kubevirt"})
    finally:
        kvtool("destroy", "--stack", stack, "--api", "kubevirt", "--auto-approve")
        kvtool("destroy", "--stack", f"{stack}-roster", "--api", "kubevirt", "--auto-approve")
    text = text_of(nb)
    assert "Plan: 3 to add, 0 to change, 0 to destroy." in text, text[-3000:]
    assert f"Stack '{stack}' is empty again." in text and f"Stack '{stack}-roster' is empty again." in text
    for each in (stack, f"{stack}-roster"):
        leftover = cluster.kubectl(*cache, "get", "virtualmachines.kubevirt.io", "-l", f"kvtool.io/stack={each}",
                                   "-o", "name").stdout
        assert leftover.strip() == "", leftover
    assert f"{stack}-ada" in text, "the class table listed its VMs"


def test_a_failing_liveness_probe_ends_the_vmi_and_always_starts_a_new_one(cluster: Cluster, tiny_image: str,
                                                                           tmp_path: Path) -> None:
    name = f"kv-live-{uuid.uuid4().hex[:4]}"
    doc = vm(name, run_strategy="Always")
    doc["spec"]["template"]["spec"]["livenessProbe"] = {"tcpSocket": {"port": 81}, "initialDelaySeconds": 5,
                                                        "periodSeconds": 2, "failureThreshold": 2}
    f = tmp_path / "vm.yaml"
    f.write_text(yaml.safe_dump(doc))
    kvtool("apply", "-f", str(f), "--stack", STACK, "--auto-approve", check=True)
    try:
        first = vmi_running(cluster, name)["metadata"]["uid"]
        wait_for(lambda: (v := get(cluster, "vmi", name)) is not None and v["metadata"]["uid"] != first,
                 timeout=180, what="the kubelet's liveness kill to end the VMI and the VM to start a new one",
                 describe=describe_vm(cluster, name))
    finally:
        kvtool("destroy", "--stack", STACK, "--auto-approve", check=True)
