"""The handler<->launcher protocol (version 1) and its client.

Sits below both components: it imports nothing from kvtool but kvtool.errors, so
the handler can talk to launchers without importing libvirt, and the launcher can
serve without importing Kubernetes.

    from kvtool.launchercom.client import LauncherClient
    status = LauncherClient(sockets_dir / f"{pod_uid}.sock").sync(vmi)
"""
