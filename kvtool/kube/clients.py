"""Construct `kubernetes` API clients from a kubeconfig, sized for concurrent work."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from kvtool.errors import ConfigError

# Enough pooled connections for kvtool's bounded-concurrency apply.
POOL_SIZE = 32


def api_client(kubeconfig: str | Path, context: str | None = None) -> client.ApiClient:
    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=str(kubeconfig), context=context,
                                client_configuration=configuration, persist_config=False)
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot use kubeconfig {kubeconfig}: {exc}") from exc
    configuration.connection_pool_maxsize = POOL_SIZE
    return client.ApiClient(configuration)


def context_name(kubeconfig: str | Path, context: str | None = None) -> str | None:
    """The context a client of this kubeconfig uses: `context`, or the file's current-context."""
    if context:
        return context
    try:
        _, active = config.list_kube_config_contexts(config_file=str(kubeconfig))
    except (ConfigException, OSError, ValueError, TypeError):
        return None
    return (active or {}).get("name")


def in_cluster_resources():
    """A Resources client from the pod's service account (real clusters)."""
    from kvtool.kube.resources import Resources

    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = POOL_SIZE
    return Resources(client.ApiClient(configuration))
