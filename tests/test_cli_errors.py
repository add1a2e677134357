"""The CLI never shows a traceback: unreachable servers, usage errors, bad input and saved plans (issue 17, item 3).

All but the last test run without a cluster: a closed port, a plain-HTTP server where TLS is expected and a
server that never answers stand in for the ways an API server cannot be reached.
"""

from __future__ import annotations

import http.server
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from urllib3 import exceptions as u3

from kvtool.cli import plan as plan_cmd
from kvtool.kube import clients, transport
from kvtool.plan import render
from kvtool.plan.model import Plan
from tests.conftest import Cluster, kvtool
from tests.vmfactory import vm

LAB = str(Path(__file__).resolve().parent.parent / "examples" / "lab.yaml")


def kubeconfig_for(tmp_path: Path, server: str, insecure: bool = True) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": insecure}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "c", "user": "u"}}],
    }))
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog does) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


@pytest.fixture
def plain_http_server() -> Iterator[int]:
    """An HTTP server where the kubeconfig expects HTTPS: the TLS handshake fails."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_refused_connection_is_one_sentence(tmp_path: Path) -> None:
    port = closed_port()
    kc = kubeconfig_for(tmp_path, f"https://127.0.0.1:{port}")
    result = kvtool("plan", "-f", LAB, "--kubeconfig", str(kc), timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"https://127.0.0.1:{port}" in lines[0] and str(kc) in lines[0] and "context lab" in lines[0]
    assert "connection refused" in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("command", [["status"], ["destroy", "--auto-approve"], ["start", "vm-1"]])
def test_other_commands_say_the_same(tmp_path: Path, command: list[str]) -> None:
    port = closed_port()
    kc = kubeconfig_for(tmp_path, f"https://127.0.0.1:{port}")
    result = kvtool(*command, "--kubeconfig", str(kc), timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"https://127.0.0.1:{port}: connection refused" in result.stderr


def test_tls_failure_is_one_sentence(tmp_path: Path, plain_http_server: int) -> None:
    kc = kubeconfig_for(tmp_path, f"https://127.0.0.1:{plain_http_server}")
    result = kvtool("status", "--kubeconfig", str(kc), timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "TLS failure" in line and f"https://127.0.0.1:{plain_http_server}" in line and str(kc) in line


def test_transport_reasons() -> None:
    pool = type("Pool", (), {"scheme": "https", "host": "api.example", "port": 6443})()
    conn = type("Conn", (), {"host": "api.example"})()

    def wrapped(reason: Exception) -> u3.MaxRetryError:
        return u3.MaxRetryError(pool, "/api", reason)  # type: ignore[arg-type]

    refused = u3.NewConnectionError(conn, "Failed to establish a new connection")  # type: ignore[arg-type]
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert transport.reason(wrapped(refused)) == "connection refused (is the API server running?)"
    assert transport.reason(wrapped(u3.NameResolutionError("api.example", conn, socket.gaierror(-2, "x")))) \
        == "cannot resolve the host name 'api.example' (DNS)"  # type: ignore[arg-type]
    assert transport.reason(wrapped(u3.ConnectTimeoutError(conn, "timed out"))) == "timed out connecting"
    assert transport.reason(u3.ReadTimeoutError(pool, "/api", "read timed out")) \
        == "timed out waiting for an answer"  # type: ignore[arg-type]
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "self-signed certificate"
    assert transport.reason(wrapped(u3.SSLError(verify))) == "TLS failure: self-signed certificate"
    assert transport.reason(u3.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))) \
        == "the connection was reset"
    assert transport.server_of(wrapped(refused)) == "https://api.example:6443"
    assert transport.reason(ValueError("not a transport error")) is None
    assert transport.reason(ConnectionRefusedError(111, "a launcher's socket")) is None


def test_input_errors_come_before_any_network_call(tmp_path: Path, silent_server: int) -> None:
    # The server never answers: a command that contacted it first would hang until the request timeout.
    kc = kubeconfig_for(tmp_path, f"https://127.0.0.1:{silent_server}")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(vm("vm-1", memory="lots")))
    for command in (["plan", "-f", str(bad)], ["apply", "-f", str(bad), "--auto-approve"],
                    ["destroy", "-f", str(bad), "--auto-approve"]):
        result = kvtool(*command, "--kubeconfig", str(kc), timeout=20)
        assert result.returncode == 1, result.stderr
        assert "bad.yaml, document 1 at spec.template.spec.domain.memory.guest" in result.stderr
        assert "nothing was sent to the cluster" in result.stderr and "Traceback" not in result.stderr


def test_roster_errors_come_before_any_network_call(tmp_path: Path, silent_server: int) -> None:
    kc = kubeconfig_for(tmp_path, f"https://127.0.0.1:{silent_server}")
    template = tmp_path / "template.yaml"
    template.write_text(yaml.safe_dump(vm("lab")))
    students = tmp_path / "students.csv"
    students.write_text("name,ssh_key\nada,ssh-ed25519 AAAA\nGrace,\n")
    for command in ("plan", "apply"):
        result = kvtool(command, "-f", str(template), "--roster", str(students), "--kubeconfig", str(kc), timeout=20)
        assert result.returncode == 1, result.stderr
        assert f"2 problem(s) in the roster {students}; nothing was sent to the cluster" in result.stderr
        assert "row 2, column ssh_key: the key's data is not a ssh-ed25519 key" in result.stderr
        assert "row 3, column name: 'Grace' is not a login name" in result.stderr and "Traceback" not in result.stderr
    # A template whose user data is a script cannot take the students' accounts: said before connecting too.
    script = tmp_path / "script.yaml"
    script.write_text(yaml.safe_dump(vm("lab", user_data="#!/bin/sh\necho hi\n")))
    students.write_text("name\nada\n")
    result = kvtool("plan", "-f", str(script), "--roster", str(students), "--kubeconfig", str(kc), timeout=20)
    assert result.returncode == 1 and "template lab: its userData must be #cloud-config" in result.stderr, result.stderr


def test_usage_errors_exit_1_under_detailed_exitcode() -> None:
    assert kvtool("plan", "-f", LAB, "--detailed-exitcode", "--no-such-flag").returncode == 1
    assert kvtool("plan", "--detailed-exitcode").returncode == 1  # -f missing
    assert kvtool("plan", "-f", LAB, "--detailed-exitcodes").returncode == 1  # a typo must not read as "changes"
    assert kvtool("--bogus", "plan", "-f", LAB, "--detailed").returncode == 1
    wrong = kvtool("plan", "-f", LAB, "--detailed-exitcode", "--stack")
    assert wrong.returncode == 1 and "usage:" in wrong.stderr and "Traceback" not in wrong.stderr
    # Elsewhere argparse's own code stays.
    assert kvtool("status", "--no-such-flag").returncode == 2


def test_plan_file_is_0600_whatever_existed(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    out.write_text("{}")
    out.chmod(0o644)
    plan_cmd.save(Plan("s", "https://127.0.0.1:6443"), str(out))
    assert out.stat().st_mode & 0o777 == 0o600
    assert json.loads(out.read_text())["stack"] == "s"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"], "no temporary file left behind"


def test_text_plan_names_its_target_first() -> None:
    text = render.render_text(Plan("s", "https://a:6443"), color=False, target="https://a:6443 (context lab)")
    assert text.splitlines()[0] == "Target cluster: https://a:6443 (context lab)"
    assert not render.render_text(Plan("s", "https://a:6443"), color=False).startswith("Target")


def test_context_name_is_the_current_context_unless_chosen(tmp_path: Path) -> None:
    kc = kubeconfig_for(tmp_path, "https://127.0.0.1:6443")
    assert clients.context_name(kc) == "lab"
    assert clients.context_name(kc, "other") == "other"


def test_plan_apply_destroy_name_the_target_cluster(cluster: Cluster, tmp_path: Path) -> None:
    stack = "t-target"
    f = tmp_path / "vm.yaml"
    f.write_text(yaml.safe_dump(vm(f"{stack}-a")))
    server = clients.api_client(cluster.kubeconfig).configuration.host
    context = clients.context_name(cluster.kubeconfig)
    header = f"Target cluster: {server} (context {context})"

    plan = kvtool("plan", "-f", str(f), "--stack", stack, check=True)
    assert plan.stdout.splitlines()[0] == header, plan.stdout
    as_json = kvtool("plan", "-f", str(f), "--stack", stack, "--json", check=True)
    assert json.loads(as_json.stdout)["server"] == server and header in as_json.stderr
    applied = kvtool("apply", "-f", str(f), "--stack", stack, "--auto-approve", check=True)
    assert applied.stdout.splitlines()[0] == header
    destroyed = kvtool("destroy", "--stack", stack, "--auto-approve", check=True)
    assert destroyed.stdout.splitlines()[0] == header
    assert "Destroy complete! Resources: 0 added, 0 changed, 1 destroyed." in destroyed.stdout

    # The same server without its CA: certificate verification fails, said in one sentence.
    untrusted = kubeconfig_for(tmp_path, server, insecure=False)
    refused = kvtool("plan", "-f", str(f), "--stack", stack, "--kubeconfig", str(untrusted), timeout=60)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert f"{server}: TLS failure: " in line and str(untrusted) in line
