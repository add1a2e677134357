"""The VM controller: VirtualMachine → VirtualMachineInstance → one launcher pod.

Pure decisions live in vm.py, vmi.py and template.py (unit-tested without a
cluster); operator.py wires them to kopf's watches and applies the results.
"""
