"""kvtool.timeline: a VM's start step by step, from the objects alone."""

from __future__ import annotations

from kvtool import timeline


def _objects() -> tuple[dict, dict, list[dict]]:
    vm = {"metadata": {"creationTimestamp": "2026-12-01T10:00:00Z"}}
    vmi = {"metadata": {"creationTimestamp": "2026-12-01T10:00:00Z"},
           "status": {"phaseTransitionTimestamps": [
               {"phase": "Pending", "phaseTransitionTimestamp": "2026-12-01T10:00:00.120Z"},
               {"phase": "Scheduled", "phaseTransitionTimestamp": "2026-12-01T10:00:00.610Z"},
               {"phase": "Running", "phaseTransitionTimestamp": "2026-12-01T10:00:01.930Z"}],
               "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T10:00:04Z"},
                              {"type": "Paused", "status": "False", "lastTransitionTime": "2026-12-01T10:00:01Z"}]}}
    pod = {"metadata": {"name": "virt-launcher-a-1", "creationTimestamp": "2026-12-01T10:00:00Z"},
           "status": {"conditions": [{"type": "PodScheduled", "status": "True",
                                      "lastTransitionTime": "2026-12-01T10:00:00Z"}],
                      "containerStatuses": [{"name": "compute", "state": {"running": {
                          "startedAt": "2026-12-01T10:00:01Z"}}}]}}
    return vm, vmi, [pod]


def test_steps_are_in_time_order_and_only_what_is_recorded() -> None:
    vm, vmi, pods = _objects()
    whats = [s.what for s in timeline.steps(vm, vmi, pods)]
    assert whats[0] == "VM created"
    assert whats.index("VMI Pending") < whats.index("VMI Scheduled") < whats.index("container compute started") \
        < whats.index("VMI Running") < whats.index("VMI Ready (the guest is up)")
    assert "pod Ready" not in whats, "a condition not True is no step"
    assert not any("Paused" in w for w in whats)


def test_rows_give_offsets_and_step_durations() -> None:
    vm, vmi, pods = _objects()
    rows = timeline.rows(timeline.steps(vm, vmi, pods))
    running = next(r for r in rows if r["what"] == "VMI Running")
    assert running["at"] == "10:00:01.930" and running["since_create"] == "+1.93s"
    assert running["step"] == "0.93s", "since the container started (10:00:01)"
    assert rows[-1]["since_create"] == "+4.00s"


def test_a_vm_without_vmi_or_with_odd_stamps_is_no_error() -> None:
    assert [s.what for s in timeline.steps({"metadata": {"creationTimestamp": "bogus"}}, None)] == []
    assert timeline.rows([]) == []
