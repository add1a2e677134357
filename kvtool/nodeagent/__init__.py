"""The node agent: the kubelet's stand-in for kvtool's embedded cluster.

It registers a Node, keeps its Lease and status fresh, and runs the launcher
pods bound to that node as supervised host processes (docs/runtime.md says
how pod paths map to host paths). Nothing here is imported by other
components; they meet the agent only through the Kubernetes API.
"""
