"""Everything `kvtool install` puts on a cluster, generated here from one place.

The same RBAC objects are used by the embedded cluster (kvtool.local.bootstrap),
so a permission missing from these manifests fails kvtool's own tests, not a
user's cluster. Least privilege: the controller manages VMIs and launcher pods,
the handler may only write status of VMIs on its own node (RBAC cannot say
"own node", so a ValidatingAdmissionPolicy checks the node name the API server
puts in the handler's pod-bound token), launcher pods get no API access at all.
"""

from __future__ import annotations

from typing import Any

from kvtool import __version__
from kvtool.api import crd

NAMESPACE = "kvtool-system"
FAILOVER_CONFIG = "kvtool-failover"
FENCE_SECRET = "kvtool-fence-embedded"
MIGRATION_CONFIG = "kvtool-migration"
MIGRATION_TLS_SECRET = "kvtool-migration-tls"  # made by the controller (kvtool.kube.migrationtls)
WEBHOOK_TLS_SECRET = "kvtool-webhook-tls"  # the eviction webhook's serving certificate, made by the controller
EVICTION_WEBHOOK = "kvtool-eviction"  # ValidatingWebhookConfiguration: evictions of launcher pods migrate VMs
WEBHOOK_PORT = 8443
CONTROLLER_EVICTION_SECONDS = 5
HANDLER_LEASE_PREFIX = "kvtool-handler-"  # + node name: each handler's heartbeat
DEFAULT_IMAGE = f"ghcr.io/kvtool/kvtool:{__version__}"
CONTROLLER, HANDLER = "kvtool-controller", "kvtool-handler"
LEASE = "kvtool-controller"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
LABELS = {"app.kubernetes.io/part-of": "kvtool", "app.kubernetes.io/managed-by": "kvtool"}
HEALTH_PORT, METRICS_PORT = 8080, 9090

Manifest = dict[str, Any]


def _meta(name: str, namespace: str | None = None, component: str | None = None) -> dict[str, Any]:
    labels = dict(LABELS)
    if component:
        labels["app.kubernetes.io/component"] = component
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if namespace:
        meta["namespace"] = namespace
    return meta


def sa_user(name: str, namespace: str = NAMESPACE) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def namespace(ns: str = NAMESPACE) -> Manifest:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(ns)}


def service_accounts(ns: str = NAMESPACE) -> list[Manifest]:
    """The controller's and the handlers'. Launcher pods run in the VMs' namespaces with no token mounted
    (automountServiceAccountToken: false): the launcher never talks to the API."""
    return [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, ns, name)}
            for name in (CONTROLLER, HANDLER)]


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def controller_rules() -> list[dict[str, Any]]:
    return [
        # delete: a lab VM that expires with kvtool.io/on-expiry: Delete; create, patch and delete: a pool's VMs.
        _rule(["kvtool.io"], ["virtualmachines"], ["get", "list", "watch", "create", "patch", "delete"]),
        _rule(["kvtool.io"], ["virtualmachines/status"], ["get", "patch", "update"]),
        _rule(["kvtool.io"], ["virtualmachinepools"], ["get", "list", "watch"]),
        _rule(["kvtool.io"], ["virtualmachinepools/status"], ["get", "patch", "update"]),
        # A pool's VMs block its deletion until they are gone (ownerReferences' blockOwnerDeletion).
        _rule(["kvtool.io"], ["virtualmachinepools/finalizers"], ["update"]),
        # Snapshots and restores: the controller copies a VM's disks into backup claims and back with Jobs, which
        # the snapshot or restore owns (finalizers: an owner reference may block its deletion); create: a lab VM's
        # baseline snapshot (kvtool.io/baseline).
        _rule(["kvtool.io"], ["virtualmachinesnapshots"], ["get", "list", "watch", "create"]),
        _rule(["kvtool.io"], ["virtualmachinerestores"], ["get", "list", "watch"]),
        _rule(["kvtool.io"], ["virtualmachinesnapshots/status", "virtualmachinerestores/status"],
              ["get", "patch", "update"]),
        _rule(["kvtool.io"], ["virtualmachinesnapshots/finalizers", "virtualmachinerestores/finalizers"], ["update"]),
        _rule(["kvtool.io"], ["virtualmachineinstances"], ["get", "list", "watch", "create", "delete", "patch"]),
        _rule(["kvtool.io"], ["virtualmachineinstances/status"], ["get", "patch", "update"]),
        # Live migration: the controller runs VirtualMachineInstanceMigrations (finalizers: abort on delete) and
        # makes them for evictions of LiveMigrate VMs.
        _rule(["kvtool.io"], ["virtualmachineinstancemigrations"],
              ["get", "list", "watch", "create", "patch", "update", "delete"]),
        _rule(["kvtool.io"], ["virtualmachineinstancemigrations/status"], ["get", "patch", "update"]),
        _rule([""], ["pods"], ["get", "list", "watch", "create", "delete"]),
        # Node loss: heartbeats are Leases; fencing annotates and taints the Node (out-of-service).
        _rule([""], ["nodes"], ["get", "list", "watch", "patch"]),
        _rule(["coordination.k8s.io"], ["leases"], ["get", "list", "watch"]),
        # Whether a lost node's VM may move: is its disk on a PV that lives only on that node? Snapshots: a backup
        # claim per disk, like the VM's (its storage class, its PV's node), made and deleted by the controller.
        _rule([""], ["persistentvolumeclaims"], ["get", "list", "watch", "create", "delete"]),
        _rule([""], ["persistentvolumes"], ["get", "list", "watch"]),
        _rule(["storage.k8s.io"], ["storageclasses"], ["get", "list"]),
        _rule(["snapshot.storage.k8s.io"], ["volumesnapshotclasses"], ["get", "list"]),
        # The Jobs that copy a snapshot's disks, in the VM's namespace (fence Jobs: the failover Role).
        _rule(["batch"], ["jobs"], ["get", "list", "watch", "create", "delete"]),
        _rule(["", "events.k8s.io"], ["events"], ["create", "patch", "update"]),
        # The eviction webhook's CA bundle, set by the controller that made its certificate.
        {**_rule(["admissionregistration.k8s.io"], ["validatingwebhookconfigurations"], ["get", "patch"]),
         "resourceNames": [EVICTION_WEBHOOK]},
    ]


def handler_rules() -> list[dict[str, Any]]:
    return [
        _rule(["kvtool.io"], ["virtualmachineinstances"], ["get", "list", "watch"]),
        _rule(["kvtool.io"], ["virtualmachineinstancemigrations"], ["get", "list", "watch"]),
        _rule(["kvtool.io"], ["virtualmachineinstances/status"], ["get", "patch", "update"]),
        _rule(["", "events.k8s.io"], ["events"], ["create", "patch", "update"]),
    ]


def rbac(ns: str = NAMESPACE) -> list[Manifest]:
    out: list[Manifest] = []
    for name, rules in ((CONTROLLER, controller_rules()), (HANDLER, handler_rules())):
        out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": _meta(name, component=name), "rules": rules})
        out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": _meta(name, component=name),
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                    "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]})
    # Leader election: only its own Lease, only in kvtool's namespace.
    out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": _meta(f"{CONTROLLER}-leader-election", ns, CONTROLLER),
                "rules": [_rule(["coordination.k8s.io"], ["leases"], ["get", "create", "update"])]})
    # Failover: its setting and the embedded fence agent's credentials (these two only), fence Jobs.
    out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": _meta(f"{CONTROLLER}-failover", ns, CONTROLLER),
                "rules": [{**_rule([""], ["configmaps"], ["get"]), "resourceNames": [FAILOVER_CONFIG]},
                          {**_rule([""], ["secrets"], ["get"]), "resourceNames": [FENCE_SECRET]},
                          _rule(["batch"], ["jobs"], ["get", "create", "delete"])]})
    # Live migration: its setting, and the handlers' TLS Secret, which the controller makes once.
    out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": _meta(f"{CONTROLLER}-migration", ns, CONTROLLER),
                "rules": [{**_rule([""], ["configmaps"], ["get"]), "resourceNames": [MIGRATION_CONFIG]},
                          {**_rule([""], ["secrets"], ["get"]),
                           "resourceNames": [MIGRATION_TLS_SECRET, WEBHOOK_TLS_SECRET]},
                          _rule([""], ["secrets"], ["create"])]})
    out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": _meta(f"{HANDLER}-migration", ns, HANDLER),
                "rules": [{**_rule([""], ["secrets"], ["get"]), "resourceNames": [MIGRATION_TLS_SECRET]}]})
    # Heartbeats: each handler renews its own Lease (kvtool-handler-<node>) in kvtool's namespace.
    out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": _meta(f"{HANDLER}-heartbeat", ns, HANDLER),
                "rules": [_rule(["coordination.k8s.io"], ["leases"], ["get", "create", "patch", "update"])]})
    for name, account in ((f"{CONTROLLER}-leader-election", CONTROLLER), (f"{CONTROLLER}-failover", CONTROLLER),
                          (f"{CONTROLLER}-migration", CONTROLLER), (f"{HANDLER}-heartbeat", HANDLER),
                          (f"{HANDLER}-migration", HANDLER)):
        out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": _meta(name, ns, account),
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                    "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}]})
    return out


def failover_config(fence_agent: str = "none", grace_seconds: int = 40, enabled: bool = True,
                    ns: str = NAMESPACE) -> Manifest:
    """The cluster's failover setting. Real installs start with no fence agent: kvtool then never moves the
    VMs of a lost node and says why. An admin sets fenceAgent: job and fenceJob (a batch/v1 Job spec whose
    container powers $NODE_NAME off, e.g. with fence_ipmilan); `kvtool cluster up` uses its own power switch
    (fenceAgent: embedded)."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(FAILOVER_CONFIG, ns, CONTROLLER),
            "data": {"enabled": "true" if enabled else "false", "nodeLostGraceSeconds": str(grace_seconds),
                     "fenceAgent": fence_agent}}


def migration_config(ns: str = NAMESPACE, **settings: str) -> Manifest:
    """The cluster's live-migration setting (KubeVirt's MigrationConfiguration and its default eviction strategy),
    with KubeVirt's defaults; the controller reads it for each new migration (kvtool.controller.migration)."""
    data = {"evictionStrategy": "None", "parallelMigrationsPerCluster": "5", "parallelOutboundMigrationsPerNode": "2",
            "completionTimeoutPerGiB": "150", "progressTimeout": "150", "allowAutoConverge": "false",
            "allowPostCopy": "false", "bandwidthPerMigrationMiB": "0", **settings}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(MIGRATION_CONFIG, ns, CONTROLLER),
            "data": data}


def embedded_fence_secret(endpoint: str, token: str, ca_pem: str, ns: str = NAMESPACE) -> Manifest:
    """Where the embedded cluster's power switch listens and how to talk to it (kvtool.local.powerapi)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": _meta(FENCE_SECRET, ns, CONTROLLER),
            "stringData": {"endpoint": endpoint, "token": token, "ca.crt": ca_pem}}


def handler_policy(ns: str = NAMESPACE) -> list[Manifest]:
    """Handlers write status only of VMIs on the node their token is bound to (like NodeRestriction)."""
    name = "kvtool-handler-own-node"
    node = f"request.userInfo.extra['{NODE_NAME_EXTRA}'][0]"
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": _meta(name, component=HANDLER),
         "spec": {
             "failurePolicy": "Fail",
             "matchConstraints": {"resourceRules": [{
                 "apiGroups": ["kvtool.io"], "apiVersions": ["*"], "operations": ["UPDATE"],
                 "resources": ["virtualmachineinstances", "virtualmachineinstances/status"]}]},
             "matchConditions": [{"name": "is-handler",
                                  "expression": f"request.userInfo.username == '{sa_user(HANDLER, ns)}'"}],
             "validations": [
                 {"expression": f"'{NODE_NAME_EXTRA}' in request.userInfo.extra",
                  "message": "a kvtool handler must use a token bound to its node (a pod or Node object)",
                  "reason": "Forbidden"},
                 {"expression": "has(oldObject.status) && has(oldObject.status.nodeName) && "
                                "has(object.status) && has(object.status.nodeName) && "
                                f"((oldObject.status.nodeName == {node} && object.status.nodeName == {node}) || "
                                # the target of a live migration writes its part of migrationState
                                "(has(oldObject.status.migrationState) && "
                                "has(oldObject.status.migrationState.targetNode) && "
                                f"oldObject.status.migrationState.targetNode == {node} && "
                                "object.status.nodeName == oldObject.status.nodeName))",
                  "messageExpression": "'a kvtool handler on node ' + " + node
                                       + " + ' may only update VirtualMachineInstances on that node, or migrating "
                                         "to it'",
                  "reason": "Forbidden"},
             ]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": _meta(name, component=HANDLER),
         "spec": {"policyName": name, "validationActions": ["Deny"]}},
    ]


def _container_security(non_root: bool) -> dict[str, Any]:
    sc: dict[str, Any] = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                          "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    if non_root:
        sc.update(runAsNonRoot=True, runAsUser=65532, runAsGroup=65532)
    return sc


def _probes(port: int) -> dict[str, Any]:
    probe = {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 10, "timeoutSeconds": 3}
    return {"livenessProbe": {**probe, "initialDelaySeconds": 15, "failureThreshold": 3},
            "readinessProbe": {**probe, "initialDelaySeconds": 2, "failureThreshold": 2}}


def controller_deployment(image: str, ns: str = NAMESPACE) -> list[Manifest]:
    labels = {"app.kubernetes.io/name": CONTROLLER}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(CONTROLLER, ns, CONTROLLER),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, **LABELS}},
                "spec": {
                    "serviceAccountName": CONTROLLER,
                    "priorityClassName": "system-cluster-critical",
                    "securityContext": {"runAsNonRoot": True},
                    # The controller is what fails VMs over from a lost node: on a lost node it must not stay
                    # the default 5 minutes (it may hold both replicas); elsewhere a replica takes the Lease.
                    "tolerations": [{"key": f"node.kubernetes.io/{t}", "operator": "Exists", "effect": "NoExecute",
                                     "tolerationSeconds": CONTROLLER_EVICTION_SECONDS}
                                    for t in ("unreachable", "not-ready")],
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                           "labelSelector": {"matchLabels": labels}}}]}},
                    "containers": [{
                        "name": "controller", "image": image,
                        "command": ["kvtool", "controller", "--in-cluster", "--leader-elect",
                                    "--lease-namespace", ns, "--launcher-image", image,
                                    "--kvm", "device",
                                    "--health-port", str(HEALTH_PORT), "--webhook-port", str(WEBHOOK_PORT)],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"name": "health", "containerPort": HEALTH_PORT},
                                  {"name": "webhook", "containerPort": WEBHOOK_PORT}],
                        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                        "securityContext": _container_security(non_root=True),
                        # the webhook's TLS key's file while its context loads it
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        **_probes(HEALTH_PORT),
                    }],
                    "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
                },
            },
        },
    }
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(CONTROLLER, ns, CONTROLLER),
           "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(CONTROLLER, ns, CONTROLLER),
               "spec": {"selector": labels, "ports": [{"name": "webhook", "port": 443, "targetPort": WEBHOOK_PORT}]}}
    return [deployment, pdb, service]


def eviction_webhook(ns: str = NAMESPACE) -> Manifest:
    """KubeVirt's eviction webhook: an eviction of a launcher pod (kubectl drain) asks the controller, which
    answers 429 and migrates the VM when its evictionStrategy says LiveMigrate. The controller sets caBundle."""
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": _meta(EVICTION_WEBHOOK, component=CONTROLLER),
            "webhooks": [{
                "name": "evictions.kvtool.io", "admissionReviewVersions": ["v1"], "sideEffects": "NoneOnDryRun",
                # Fail: while no controller answers, a VM's pod is not killed by an eviction meant to move it.
                "failurePolicy": "Fail", "timeoutSeconds": 10,
                "clientConfig": {"service": {"name": CONTROLLER, "namespace": ns, "path": "/evict", "port": 443}},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["pods/eviction"], "scope": "Namespaced"}],
                "matchConditions": [{"name": "launcher-pods",
                                     "expression": "request.name.startsWith('virt-launcher-')"}]}]}


def handler_daemonset(image: str, ns: str = NAMESPACE) -> Manifest:
    labels = {"app.kubernetes.io/name": HANDLER}
    security = _container_security(non_root=False)
    security["runAsUser"] = 0  # launcher sockets are root's (0600); nothing else needs root, nothing needs privilege
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(HANDLER, ns, HANDLER),
        "spec": {
            "selector": {"matchLabels": labels},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {**labels, **LABELS}},
                "spec": {
                    "serviceAccountName": HANDLER,
                    "priorityClassName": "system-node-critical",
                    "tolerations": [{"operator": "Exists"}],
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [
                            {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}},
                    "containers": [{
                        "name": "handler", "image": image,
                        "command": ["kvtool", "handler", "--in-cluster", "--node", "$(NODE_NAME)",
                                    "--sockets-dir", "/var/run/kvtool/sockets", "--namespace", ns,
                                    "--health-port", str(HEALTH_PORT), "--migration-address", "$(POD_IP)"],
                        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                                # live migration: other nodes' handlers reach this one's proxy on the pod's IP
                                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                        "ports": [{"name": "health", "containerPort": HEALTH_PORT}],
                        # 100m, a guest vCPU's weight: under load the node's heartbeat (failover) and the
                        # migration proxy (bench/migration.py) must not starve behind the guests it serves
                        "resources": {"requests": {"cpu": "100m", "memory": "96Mi"}, "limits": {"memory": "384Mi"}},
                        "securityContext": security,
                        "volumeMounts": [{"name": "sockets", "mountPath": "/var/run/kvtool/sockets"},
                                         # the migration TLS key's file while the TLS contexts load it
                                         {"name": "tmp", "mountPath": "/tmp"}],
                        **_probes(HEALTH_PORT),
                    }],
                    "volumes": [{"name": "sockets",
                                 "hostPath": {"path": "/var/run/kvtool/sockets", "type": "DirectoryOrCreate"}},
                                {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
                },
            },
        },
    }


def rbac_and_policy(ns: str = NAMESPACE) -> list[Manifest]:
    """What the embedded cluster shares with real installs: accounts, roles, the admission policy."""
    return [namespace(ns), *service_accounts(ns), *rbac(ns), *handler_policy(ns), eviction_webhook(ns)]


def workloads(image: str, ns: str = NAMESPACE) -> list[Manifest]:
    """kvtool's own pods: the controller Deployment (and its PDB) and the handler DaemonSet."""
    return [*controller_deployment(image, ns), handler_daemonset(image, ns)]


def all_manifests(image: str = DEFAULT_IMAGE, ns: str = NAMESPACE) -> list[Manifest]:
    """In apply order: namespace and CRDs first, workloads last."""
    return [namespace(ns), *crd.all_crds(), *service_accounts(ns), *rbac(ns), *handler_policy(ns),
            eviction_webhook(ns), failover_config(ns=ns), migration_config(ns=ns), *workloads(image, ns)]
