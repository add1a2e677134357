"""The Terraform provider `kvtool.io/kvtool/kvtool`, on the `tf` framework (plugin protocol 6).

The executable is `terraform-provider-kvtool` (a console script, or the
launcher `kvtool tf install` writes). Terraform starts it several times per
command, so imports stay lazy: the Kubernetes client is made on first use.
Provider settings resolve the cluster the same way as the CLI
(kvtool.kube.config.resolve): kubeconfig > $KUBECONFIG > the embedded
cluster if up > ~/.kube/config.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tf import schema as s
from tf import types as t
from tf.gen import tfplugin_pb2 as pb
from tf.iface import DataSource, PlanContext, Provider, Resource
from tf.provider import ProviderServicer, _decode_state, _encode_state
from tf.types import Unknown
from tf.utils import Diagnostics, read_dynamic_value, to_dynamic_value

from kvtool.api import builder
from kvtool.api.types import DEFAULT_STACK, KVTOOL, TARGETS, Target
from kvtool.errors import KvtoolError
from kvtool.kube import config as kubeconfig
from kvtool.plan import desired
from kvtool.terraform import datasources, resources

if TYPE_CHECKING:
    from kvtool.kube.resources import Resources

SOURCE = "kvtool.io/kvtool/kvtool"
PREFIX = "kvtool_"


@dataclass
class Connection:
    res: Resources
    server: str
    kubeconfig: kubeconfig.ResolvedKubeconfig
    target: Target = KVTOOL  # whose VM API the resources drive (the provider's `api`)


def _attr(name: str, type_: t.TfType, description: str, **kwargs: Any) -> s.Attribute:
    return s.Attribute(name, type_, description=description, description_kind=s.TextFormat.Plain, **kwargs)


PROVIDER_SCHEMA = s.Schema(version=0, attributes=[
    _attr("kubeconfig", t.String(), "Path of the kubeconfig (default: $KUBECONFIG, the embedded cluster if up, "
          "~/.kube/config).", optional=True),
    _attr("context", t.String(), "kubeconfig context to use.", optional=True),
    _attr("namespace", t.String(), "Namespace of VMs that name none (default \"default\").", optional=True),
    _attr("stack", t.String(), f"kvtool stack the VMs belong to (default {DEFAULT_STACK!r}): the same stack "
          "`kvtool plan --stack` works on.", optional=True),
    _attr("force_conflicts", t.Bool(), "Take over fields another field manager (kubectl...) owns.", optional=True),
    _attr("api", t.String(), "Whose VM API to drive: \"kvtool\" (kvtool.io), \"kubevirt\" (kubevirt.io/v1, on a "
          "cluster running KubeVirt) or \"auto\" (the default: kvtool's where the cluster serves it, else "
          "KubeVirt's).", optional=True),
])
API_CHOICES = ("auto", *TARGETS)


class KvtoolProvider(Provider):
    def __init__(self) -> None:
        self.kubeconfig: str | None = None
        self.context: str | None = None
        self.namespace = "default"
        self.stack = DEFAULT_STACK
        self.force_conflicts = False
        self.api = "auto"
        self.resolved: kubeconfig.ResolvedKubeconfig | None = None
        self._connection: Connection | None = None
        self._lock = threading.Lock()
        self._kinds: dict[str, str] = {}

    def get_model_prefix(self) -> str:
        return PREFIX

    def full_name(self) -> str:
        return SOURCE

    def get_provider_schema(self, diags: Diagnostics) -> s.Schema:
        return PROVIDER_SCHEMA

    def validate_config(self, diags: Diagnostics, config: dict[str, Any]) -> None:
        stack, namespace = config.get("stack"), config.get("namespace")
        if isinstance(stack, str):
            try:
                desired.validate_stack(stack)
            except KvtoolError as exc:
                diags.add_error("Invalid stack", exc.message, path=["stack"])
        api = config.get("api")
        if isinstance(api, str) and api not in API_CHOICES:
            diags.add_error("Invalid api", f"{api!r} is not one of {', '.join(API_CHOICES)}", path=["api"])
        if isinstance(namespace, str) and (not desired.DNS_LABEL.match(namespace) or len(namespace) > 63):
            diags.add_error("Invalid namespace", f"{namespace!r} is not a valid namespace name (a DNS-1123 label)",
                            path=["namespace"])

    def configure_provider(self, diags: Diagnostics, config: dict[str, Any]) -> None:
        for key in ("kubeconfig", "context", "namespace", "stack", "force_conflicts", "api"):
            if config.get(key) is Unknown:
                diags.add_error(f"provider setting {key} is not known yet",
                                "The kvtool provider needs its settings at plan time; do not derive them from "
                                "resources that are not created yet.", path=[key])
                return
        self.kubeconfig = config.get("kubeconfig")
        self.context = config.get("context")
        self.namespace = config.get("namespace") or "default"
        self.stack = config.get("stack") or DEFAULT_STACK
        self.force_conflicts = bool(config.get("force_conflicts"))
        self.api = config.get("api") or "auto"
        try:
            self.resolved = kubeconfig.resolve(self.kubeconfig, self.context)
        except KvtoolError as exc:
            diags.add_error("No cluster to talk to", f"{exc.message}" + (f"\n\nHint: {exc.hint}" if exc.hint else ""),
                            path=["kubeconfig"] if self.kubeconfig else None)

    def connection(self) -> Connection:
        """The API client, made once per provider process (Terraform calls us from several threads)."""
        with self._lock:
            if self._connection is None:
                from kvtool.kube import clients  # the Kubernetes client costs ~0.5 s to import
                resolved = kubeconfig.resolve(self.kubeconfig, self.context)
                api = clients.api_client(resolved.path, resolved.context)
                from kvtool.kube.resources import Resources, target_for

                res = Resources(api)
                self._connection = Connection(res, api.configuration.host, resolved, target_for(res, self.api))
            return self._connection

    def image_kind(self, image: str) -> str:
        """"kernel" or "disk": asked of the local image store, else guessed from the name."""
        with self._lock:
            if image not in self._kinds:
                self._kinds[image] = _store_kind(image)
            return self._kinds[image]

    def get_data_sources(self) -> list[type[DataSource]]:
        return [datasources.VirtualMachineDataSource, datasources.VirtualMachinesDataSource]

    def get_resources(self) -> list[type[Resource]]:
        return [resources.VirtualMachineResource]


def _store_kind(image: str) -> str:
    from kvtool.images import store

    try:
        found = store.ImageStore().find(image)
    except KvtoolError:
        found = None  # not a store name (e.g. an OCI reference), or an unreadable entry
    return found.kind if found is not None else builder.image_kind(image)


class Servicer(ProviderServicer):
    """The framework's servicer, with four gaps filled: a create plan also goes through the resource's
    plan() (so defaults such as the namespace and problems show in `terraform plan`); an attribute
    the configuration omits plans its default rather than its current value (see _with_defaults);
    a destroy plan is answered instead of refused; and state written by an older provider
    (attributes added or removed since) is brought to the current schema instead of failing to decode."""

    def UpgradeResourceState(self, request: pb.UpgradeResourceState.Request, context: Any) -> Any:
        if not request.raw_state.json:
            return super().UpgradeResourceState(request, context)
        old = json.loads(request.raw_state.json)
        attrs = self._get_res_attrs(request.type_name)
        state = {name: old.get(name) for name in attrs}
        return pb.UpgradeResourceState.Response(upgraded_state=to_dynamic_value(state))

    def PlanResourceChange(self, request: pb.PlanResourceChange.Request, context: Any) -> Any:
        proposed = read_dynamic_value(request.proposed_new_state)
        if proposed is None:
            return pb.PlanResourceChange.Response(planned_state=request.proposed_new_state)
        request = self._with_defaults(request, proposed)
        response = super().PlanResourceChange(request, context)
        if read_dynamic_value(request.prior_state) is not None or any(
                d.severity == pb.Diagnostic.ERROR for d in response.diagnostics):
            return response
        type_name = request.type_name
        attrs, blocks = self._get_res_attrs(type_name), self._get_res_blocks(type_name)
        diags = Diagnostics()
        encoded, planned = _decode_state(diags, attrs, blocks, response.planned_state)
        inst = self.app.new_resource(self._get_res_cls(type_name))
        planned = inst.plan(PlanContext(diags, type_name, changed_fields=set(planned or ())), None, planned or {})
        return pb.PlanResourceChange.Response(
            planned_state=_encode_state(attrs, blocks, planned, encoded),
            diagnostics=[*response.diagnostics, *diags.to_pb()])

    def _with_defaults(self, request: pb.PlanResourceChange.Request, proposed: dict[str, Any]) -> Any:
        """An attribute left out of the configuration plans its default, not the value it has now.

        Terraform proposes the prior value for an optional+computed attribute the configuration
        omits, so a VM changed with kubectl (cores 1 -> 3) would plan no change; the resource's
        config_defaults() say what an omitted attribute means."""
        inst = self.app.new_resource(self._get_res_cls(request.type_name))
        defaults = inst.config_defaults() if hasattr(inst, "config_defaults") else {}
        config = read_dynamic_value(request.config) or {}
        wanted = {k: v for k, v in defaults.items() if config.get(k) is None and proposed.get(k) != v}
        if not wanted:
            return request
        changed = pb.PlanResourceChange.Request()
        changed.CopyFrom(request)
        changed.proposed_new_state.CopyFrom(to_dynamic_value({**proposed, **wanted}))
        return changed


def main(argv: list[str] | None = None) -> None:
    """Entry point of terraform-provider-kvtool; speaks go-plugin's handshake on stdout."""
    import tf.provider
    from tf import runner

    # run_provider looks the servicer class up in tf.provider when it starts; hand it ours.
    tf.provider.ProviderServicer = Servicer
    runner.run_provider(KvtoolProvider(), argv or sys.argv)


if __name__ == "__main__":
    main()
