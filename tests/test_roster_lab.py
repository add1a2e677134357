"""A roster lab on the cluster (issue 15, parts 3 and 5): `kvtool apply --roster` makes one debian-12 VM per
student, each with that student's own account, reached with their own key or, without one, the initial password
kept in a Secret; planning the same roster again changes nothing; `kvtool lab reset` puts every VM back to its
images (a file a student wrote is gone, the VM boots and takes the student's key again)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import yaml

from kvtool.plan import roster
from tests.conftest import Cluster, kvtool
from tests.runtime_helpers import get, wait_for

STACK = "roster"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "roster"
# Three TCG guests booting at once on two cores: cloud-init is done in about 90 s each, unloaded.
BOOT_TIMEOUT = 600


def keypair(tmp_path: Path, name: str) -> Path:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


def test_a_roster_of_three_gets_three_vms_each_with_its_own_user(cluster: Cluster, debian_image: str,
                                                                   tmp_path: Path) -> None:
    ada, alan = keypair(tmp_path, "ada"), keypair(tmp_path, "alan")
    students = tmp_path / "students.csv"
    students.write_text("name,ssh_key,group\n"
                        f"ada,{ada.with_suffix('.pub').read_text().strip()},tue\n"
                        f"alan,{alan.with_suffix('.pub').read_text().strip()},tue\n"
                        "grace,,thu\n")
    template = yaml.safe_load((EXAMPLES / "template.yaml").read_text())
    template["spec"]["template"]["spec"]["volumes"][0]["containerDisk"]["image"] = debian_image
    template_file = tmp_path / "template.yaml"
    template_file.write_text(yaml.safe_dump(template))
    files = ("--roster", str(students), "-f", str(template_file), "--stack", STACK)
    started = time.monotonic()
    applied = kvtool("apply", *files, "--auto-approve", check=True)
    assert "Plan: 4 to add, 0 to change, 0 to destroy." in applied.stdout, applied.stdout
    try:
        # The password made at the first apply is reused: the same roster plans no change.
        again = kvtool("plan", *files, "--detailed-exitcode")
        assert again.returncode == 0 and "No changes." in again.stdout, again.stdout + again.stderr
        logins = json.loads(kvtool("lab", "passwords", "--stack", STACK, "-o", "json", check=True).stdout)
        assert [(r["vm"], r["login"]) for r in logins] == [("lab-grace", "grace")]
        password = logins[0]["password"]
        assert password not in again.stdout + applied.stdout, "a password must never be in a plan"
        described = cluster.kubectl("get", "vm", "lab-grace", "-o", "json").stdout
        assert password not in described, "the VM only names the Secret holding the password"
        student = cluster.kubectl("get", "vm", "lab-ada", "-o",
                                  "jsonpath={.metadata.labels.kvtool\\.io/student} "
                                  "{.metadata.annotations.roster\\.kvtool\\.io/group}").stdout
        assert student == "ada tue"

        known_hosts = str(tmp_path / "known_hosts")

        def ssh(login: str, vm: str, *options: str, env: dict[str, str] | None = None,
                key: Path | None = None) -> subprocess.CompletedProcess[str]:
            return kvtool("ssh", f"{login}@{vm}", *(["-i", str(key)] if key else []), "--known-hosts", known_hosts,
                          "-o", "ConnectTimeout=20", *options, "--", "id -un; hostname; sudo -n true && echo sudo",
                          env=env, timeout=120)

        def answers(login: str, vm: str, **kwargs: object) -> str:
            result = wait_for(lambda: (r := ssh(login, vm, "-o", "BatchMode=yes", **kwargs)).returncode == 0 and r,
                              timeout=BOOT_TIMEOUT, what=f"ssh {login}@{vm}",
                              describe=lambda: ssh(login, vm, "-o", "BatchMode=yes", **kwargs).stderr + "\n" +
                              kvtool("console", vm, "--tail").stdout[-2000:])
            return result.stdout

        assert answers("ada", "lab-ada", key=ada) == "ada\nlab-ada\nsudo\n"
        assert answers("alan", "lab-alan", key=alan) == "alan\nlab-alan\nsudo\n"
        print(f"\nroster of 3: apply to both keyed students' ssh answering {time.monotonic() - started:.1f} s")
        # Each VM has its own student only: ada's key opens nothing on alan's VM.
        denied = ssh("ada", "lab-alan", "-o", "BatchMode=yes", key=ada)
        assert denied.returncode == 255 and "Permission denied" in denied.stderr, denied.stderr

        # grace has no key: her initial password, typed by ssh's askpass program as a user would type it.
        askpass = tmp_path / "askpass"
        askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$ROSTER_TEST_PASSWORD"\n')
        askpass.chmod(0o700)
        env = {"SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "ROSTER_TEST_PASSWORD": password}
        by_password = ("-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
                       "-o", "NumberOfPasswordPrompts=1")
        grace = wait_for(lambda: (r := ssh("grace", "lab-grace", *by_password, env=env)).returncode == 0 and r,
                         timeout=BOOT_TIMEOUT, what="ssh grace@lab-grace with her password",
                         describe=lambda: ssh("grace", "lab-grace", *by_password, env=env).stderr)
        assert grace.stdout == "grace\nlab-grace\nsudo\n" and "unable to resolve host" not in grace.stderr
        wrong = ssh("grace", "lab-grace", *by_password, env={**env, "ROSTER_TEST_PASSWORD": "not-" + password})
        assert wrong.returncode == 255 and "Permission denied" in wrong.stderr, wrong.stderr

        # ada breaks her VM a little; the reset restarts every VM from its images.
        wrote = kvtool("ssh", "ada@lab-ada", "-i", str(ada), "--known-hosts", known_hosts, "-o", "BatchMode=yes",
                       "--", "echo homework > ~/homework && sync", timeout=120)
        assert wrote.returncode == 0, wrote.stderr
        before = {vm: (get(cluster, "vmi", vm) or {})["metadata"]["uid"] for vm in ("lab-ada", "lab-alan")}
        refused = kvtool("lab", "reset", "--stack", STACK)  # no terminal to confirm on: nothing happens
        assert refused.returncode == 1 and "pass --auto-approve" in refused.stderr, refused.stderr
        assert (get(cluster, "vmi", "lab-ada") or {})["metadata"]["uid"] == before["lab-ada"]
        reset_at = time.monotonic()
        reset = kvtool("lab", "reset", "--stack", STACK, "--auto-approve", "--known-hosts", known_hosts, check=True)
        assert reset.stdout.splitlines()[:3] == [f"{vm}: restarting from its images"
                                                 for vm in ("lab-ada", "lab-alan", "lab-grace")], reset.stdout
        assert f"Forgot their old SSH host keys in {known_hosts}." in reset.stdout
        # Once the old guests are gone (ssh could still reach them a moment), the new ones answer, file gone.
        wait_for(lambda: all((v := get(cluster, "vmi", vm)) and v["metadata"]["uid"] != uid
                             and not v["metadata"].get("deletionTimestamp") for vm, uid in before.items()),
                 timeout=180, what="new VMIs for the reset VMs")
        Path(known_hosts).unlink(missing_ok=True)  # an old key an early ssh filed again, if any
        for student, key in (("ada", ada), ("alan", alan)):
            fresh = wait_for(lambda s=student, k=key: (r := ssh(s, f"lab-{s}", "-o", "BatchMode=yes", key=k))
                             .returncode == 0 and r, timeout=BOOT_TIMEOUT, what=f"ssh {student} after the reset")
            assert fresh.stdout == f"{student}\nlab-{student}\nsudo\n"
        gone = kvtool("ssh", "ada@lab-ada", "-i", str(ada), "--known-hosts", known_hosts, "-o", "BatchMode=yes",
                      "--", "test ! -e ~/homework", timeout=120)
        assert gone.returncode == 0, "the file ada wrote must be gone after the reset"
        print(f"lab reset of 3: reset to both keyed students' ssh answering {time.monotonic() - reset_at:.1f} s")
    finally:
        destroyed = kvtool("destroy", "--stack", STACK, "--auto-approve", check=True)
    assert "Resources: 0 added, 0 changed, 4 destroyed." in destroyed.stdout, destroyed.stdout
    found = cluster.kubectl("get", "secrets", "-l", roster.selector(STACK), "-o", "name").stdout.split()
    assert found == [], "the login Secrets go with the stack"
