"""Failover's decisions as pure functions, its power switch over real HTTPS, its manifests."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvtool.controller import failover, fence
from kvtool.controller import vm as vm_logic
from kvtool.deploy import manifests
from kvtool.handler import heartbeat
from kvtool.local import pki as pki_mod
from kvtool.local import powerapi
from tests.test_controller_logic import NOW, vm, vmi

NODE = "kvtool-node-1"


def lease(seconds_ago: float) -> dict[str, Any]:
    renew = NOW - dt.timedelta(seconds=seconds_ago)
    return {"spec": {"renewTime": renew.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}


def test_the_setting_parses_and_a_bad_one_turns_failover_off_with_the_reason() -> None:
    assert failover.Config.from_data(None) == failover.Config(enabled=True, grace=40.0, fence_agent="none")
    cfg = failover.Config.from_data({"enabled": "true", "nodeLostGraceSeconds": "12", "fenceAgent": "embedded"})
    assert cfg.fences and cfg.grace == 12
    assert not failover.Config.from_data({"enabled": "false", "fenceAgent": "embedded"}).fences
    for data, expected in (({"nodeLostGraceSeconds": "soon"}, "must be a number of seconds, got 'soon'"),
                           ({"nodeLostGraceSeconds": "1"}, "between 12 and 3600, got 1"),
                           ({"fenceAgent": "ipmi"}, "fenceAgent must be one of none, embedded, job, got 'ipmi'"),
                           ({"enabled": "yes"}, "enabled must be true or false")):
        cfg = failover.Config.from_data(data)
        assert not cfg.enabled and expected in cfg.error
        cond = failover.lost_condition(NODE, NOW, cfg, "", "", False)
        assert cond["reason"] == "FailoverMisconfigured" and expected in cond["message"]


def test_a_node_is_lost_only_when_both_heartbeats_are_stale() -> None:
    # The kubelet stopped (its Lease is old) but the handler still beats: not lost.
    assert not failover.is_lost(failover.last_heartbeat([lease(100), lease(1)]), 40, NOW)
    assert failover.is_lost(failover.last_heartbeat([lease(100), lease(41)]), 40, NOW)
    assert failover.is_lost(failover.last_heartbeat([lease(41), None]), 40, NOW)
    assert not failover.is_lost(failover.last_heartbeat([None, None]), 40, NOW), "no heartbeat ever: not judged"


def test_the_node_lost_condition_says_what_happens_next() -> None:
    agent = failover.Config(fence_agent="embedded", grace=40)
    cases = [
        ((failover.Config(), "", False), ("NoFenceAgent", "no fence agent is configured")),
        ((failover.Config(enabled=False, fence_agent="embedded"), "", False), ("FailoverDisabled", "enabled=false")),
        ((agent, "", True), ("FailoverOptedOut", "kvtool.io/failover=disabled")),
        ((agent, "Fencing", False), ("Fencing", "fencing it with agent embedded")),
        ((agent, "FenceFailed", False), ("FenceFailed", "failed, retrying: boom")),
        ((agent, "Fenced", False), ("NodeFenced", "fenced by agent embedded: boom")),
    ]
    for (cfg, state, opted), (reason, text) in cases:
        cond = failover.lost_condition(NODE, NOW, cfg, state, "boom", opted)
        assert cond["type"] == "NodeLost" and cond["status"] == "True"
        assert cond["reason"] == reason and text in cond["message"], cond
        assert f"node {NODE} sent no heartbeat since 2026-11-25T12:00:00Z (grace 40s)" in cond["message"]


def _pv(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "pv1"}, "spec": spec}


@pytest.mark.parametrize(("pv", "kind"), [
    (_pv(hostPath={"path": "/data"}), "hostPath"),
    (_pv(local={"path": "/mnt/disk"}), "local"),
    (_pv(csi={"driver": "x"}, nodeAffinity={"required": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}]}]}}), "pinned by nodeAffinity"),
    (_pv(nfs={"server": "nas", "path": "/x"}), None),
])
def test_a_disk_on_a_node_local_volume_blocks_failover(pv: dict[str, Any], kind: str | None) -> None:
    owner = vm("Always")
    inst = vmi(owner, "Running")
    inst["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "c1"}}]
    claims = {"c1": {"spec": {"volumeName": "pv1"}}}
    why = failover.node_local_disk(inst, claims, {"pv1": pv}, NODE)
    if kind is None:
        assert why is None
    else:
        assert why is not None and f"PersistentVolume pv1 ({kind})" in why and f"only on node {NODE}" in why


def test_a_fenced_vmi_fails_and_restarts_unless_held() -> None:
    owner = vm("Always")
    running = vmi(owner, "Running", conditions=[{"type": "Ready", "status": "True"}])
    lost = failover.lost_condition(NODE, NOW, failover.Config(fence_agent="embedded"), "Fenced", "off", False)
    patch = failover.fenced_status(running, lost, None)
    assert patch["phase"] == "Failed" and patch["reason"] == "NodeFenced"
    assert {c["type"]: c["status"] for c in patch["conditions"]} == {"Ready": "False", "NodeLost": "True",
                                                                     "Failure": "True"}
    failed = {**running, "status": {**running["status"], **patch}}
    d = vm_logic.decide(owner, failed, NOW)
    assert d.delete_vmi == running["metadata"]["uid"], "Always: the fenced VMI makes way for a new one"
    assert "(NodeFenced)" in d.events[0][2]
    # A disk that lives only on the lost node: held, and the VM says why.
    blocked = {**running, "status": {**running["status"], **failover.fenced_status(running, lost, "disk on n1")}}
    d = vm_logic.decide(owner, blocked, NOW)
    assert d.delete_vmi is None and d.status["printableStatus"] == "Stopped"
    assert next(c for c in d.status["conditions"] if c["type"] == "Failure")["reason"] == "NodeFenced"
    # Opted out: held too.
    owner["metadata"]["annotations"] = {"kvtool.io/failover": "disabled"}
    d = vm_logic.decide(owner, failed, NOW)
    assert d.delete_vmi is None and d.status["printableStatus"] == "Stopped"


def test_a_vm_on_a_lost_node_is_unknown_and_says_why() -> None:
    owner = vm("Always")
    cond = failover.lost_condition(NODE, NOW, failover.Config(), "", "", False)
    running = vmi(owner, "Running", conditions=[{"type": "Ready", "status": "True"}, cond])
    d = vm_logic.decide(owner, running, NOW)
    assert d.status["printableStatus"] == "Unknown" and not d.delete_vmi
    lost = next(c for c in d.status["conditions"] if c["type"] == "NodeLost")
    assert lost["status"] == "True" and lost["reason"] == "NoFenceAgent"


def test_the_handler_sweeps_only_domains_no_live_vmi_claims() -> None:
    owner = vm("Always")
    live = vmi(owner, "Running", nodeName=NODE, activePods={"pod-a": NODE})
    ended = vmi(owner, "Failed", nodeName=NODE, activePods={"pod-b": NODE})
    moved = vmi(owner, "Running", nodeName="elsewhere", activePods={"pod-c": "elsewhere"})
    assert heartbeat.claimed_pods([live, ended, moved], NODE) == {"pod-a"}
    doc = heartbeat.lease(NODE, "kvtool-system", "2026-11-25T12:00:00.000000Z")
    assert doc["metadata"]["name"] == f"kvtool-handler-{NODE}" and doc["spec"]["holderIdentity"] == NODE


def test_the_controller_leaves_a_lost_node_quickly_and_may_only_read_its_own_secret() -> None:
    ctl = manifests.controller_deployment("img")[0]["spec"]["template"]["spec"]
    tolerated = {t["key"]: t["tolerationSeconds"] for t in ctl["tolerations"]}
    assert tolerated == {"node.kubernetes.io/unreachable": 5, "node.kubernetes.io/not-ready": 5}
    role = next(d for d in manifests.rbac() if d["kind"] == "Role" and d["metadata"]["name"].endswith("failover"))
    secrets = next(r for r in role["rules"] if r["resources"] == ["secrets"])
    assert secrets["resourceNames"] == [manifests.FENCE_SECRET] and secrets["verbs"] == ["get"]
    assert manifests.failover_config()["data"]["fenceAgent"] == "none", "real installs never fence by default"


# -- the embedded power switch, over real TLS, against a stand-in control socket --------------------------
@pytest.fixture
def switch(tmp_path: Path) -> Iterator[tuple[str, str, Path, list[dict[str, str]]]]:
    p = pki_mod.PKI(tmp_path / "pki")
    p.ensure()
    cert, key = p.ensure_server("power-switch", "kvtool-power-switch", "127.0.0.1")
    control = tmp_path / "control.sock"
    seen: list[dict[str, str]] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(control))
    listener.listen(4)

    def answer() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                request = json.loads(conn.makefile().readline())
                seen.append(request)
                reply = {"ok": True, "node": request["node"], "power": "off", "killed": 3} \
                    if request["node"] == NODE else {"ok": False, "error": "no node named 'x'"}
                conn.sendall((json.dumps(reply) + "\n").encode())

    threading.Thread(target=answer, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = powerapi.serve("127.0.0.1", port, cert, key, "s3cret-token", control)
    yield f"https://127.0.0.1:{port}", p.ca_cert.read_text(), control, seen
    server.shutdown()
    listener.close()


def _secret(endpoint: str, token: str, ca: str) -> dict[str, Any]:
    import base64

    return {"data": {k: base64.b64encode(v.encode()).decode()
                     for k, v in (("endpoint", endpoint), ("token", token), ("ca.crt", ca))}}


def test_the_embedded_agent_powers_the_node_off_through_the_switch(switch) -> None:
    endpoint, ca, _control, seen = switch
    message = fence.embedded(NODE, _secret(endpoint, "s3cret-token", ca))
    assert message == "powered off by the embedded power switch (3 processes stopped)"
    assert seen == [{"cmd": "node-stop", "node": NODE}]


def test_the_switch_refuses_a_wrong_token_and_an_unknown_node(switch) -> None:
    endpoint, ca, _control, seen = switch
    with pytest.raises(fence.FenceError, match="HTTP 401"):
        fence.embedded(NODE, _secret(endpoint, "guess", ca))
    with pytest.raises(fence.FenceError, match=r"HTTP 404 .*no node named"):
        fence.embedded("x", _secret(endpoint, "s3cret-token", ca))
    with pytest.raises(fence.FenceError, match="Secret kvtool-system/kvtool-fence-embedded is missing"):
        fence.embedded(NODE, None)
    with pytest.raises(fence.FenceError, match="must be an https:// URL"):
        fence.embedded(NODE, _secret(endpoint.replace("https", "http"), "s3cret-token", ca))
    # Without the cluster CA the server is not trusted: TLS fails before any token is sent.
    context = ssl.create_default_context()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{endpoint}/v1/nodes/{NODE}", context=context, timeout=5)
    assert [r["node"] for r in seen] == ["x"], "a refused token never reaches the supervisor"


def test_a_fence_job_is_the_admins_spec_for_this_node_kept_off_it() -> None:
    spec = {"template": {"spec": {"containers": [{"name": "ipmi", "image": "fence-agents",
                                                  "command": ["fence_ipmilan", "--plug", "$(NODE_NAME)"]}]}}}
    job = fence.job_manifest("Node_A.example", spec, "kvtool-system")
    assert job["metadata"]["name"] == "kvtool-fence-node-a-example"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    assert pod["containers"][0]["env"] == [{"name": "NODE_NAME", "value": "Node_A.example"}]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn",
                                            "values": ["Node_A.example"]}]}]
    assert "env" not in spec["template"]["spec"]["containers"][0], "the ConfigMap's spec is not changed"
    assert fence.job_outcome(job) is None
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    assert fence.job_outcome(job) == (False, "fence Job kvtool-fence-node-a-example failed: BackoffLimitExceeded")
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    assert fence.job_outcome(job) == (True, "fence Job kvtool-fence-node-a-example completed")


def test_the_job_agent_needs_a_job_spec_with_a_container() -> None:
    for data, expected in (({"fenceAgent": "job"}, "fenceAgent job needs fenceJob"),
                           ({"fenceAgent": "job", "fenceJob": "template: ["}, "fenceJob is not YAML"),
                           ({"fenceAgent": "job", "fenceJob": "template: {spec: {}}"}, "template.spec.containers")):
        cfg = failover.Config.from_data(data)
        assert not cfg.enabled and expected in cfg.error, cfg
    cfg = failover.Config.from_data({"fenceAgent": "job", "fenceJob": "template:\n  spec:\n    containers: [{}]\n"})
    assert cfg.fences and cfg.fence_job == {"template": {"spec": {"containers": [{}]}}}


def test_events_name_their_object_and_reporter() -> None:
    from kvtool.kube import events

    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "uid": "u1"}}
    ev = events.event_for(node, "Warning", "NodeFenced", "x" * 2000, "kvtool-controller")
    assert ev["metadata"] == {"generateName": f"{NODE}.", "namespace": "default"}
    assert ev["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": NODE, "namespace": None, "uid": "u1"}
    assert ev["reason"] == "NodeFenced" and len(ev["message"]) == 1024 and ev["source"]["component"] == \
        "kvtool-controller"
