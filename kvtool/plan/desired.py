"""Desired state: YAML/JSON files, directories or Python objects → validated manifests.

Every problem in every document is collected before anything else happens,
each with its file, document index, field path and what was expected; a
plan is only made from input that is valid throughout.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kvtool.api import expiry, kubevirt, schema
from kvtool.api.types import (
    DEFAULT_STACK,
    KVTOOL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    PLANNABLE,
    STACK_LABEL,
    VIRTUAL_MACHINE_POOL,
    Kind,
    Target,
    kind_for,
)
from kvtool.errors import KvtoolError

try:  # libyaml's C loader is ~10x faster on thousands of documents
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - PyYAML without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
YAML_SUFFIXES = (".yaml", ".yml", ".json")
# Server-set metadata a user may paste from `kubectl get -o yaml`; dropped, not refused.
SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "selfLink",
                   "deletionTimestamp", "deletionGracePeriodSeconds", "ownerReferences")
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


@dataclass(frozen=True)
class Location:
    source: str  # file path or "<python>"
    index: int  # document index within the source, from 0
    line: int | None = None  # from 1, where the YAML reader knows it

    def __str__(self) -> str:
        return f"{self.source}, document {self.index + 1}" + (f", line {self.line}" if self.line else "")


@dataclass(frozen=True)
class InputIssue:
    location: Location
    path: str
    message: str

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.location}{where}: {self.message}"


class NotAStringIssue(InputIssue):
    """A plain YAML value read as a boolean, number or date where a string belongs (`name: no`): the
    reader's message, with its line and the quoted fix, stands for any later check of that field."""


class InvalidInput(KvtoolError):
    """The desired state has problems; all of them are listed."""

    def __init__(self, issues: Sequence[InputIssue]) -> None:
        self.issues = list(issues)
        lines = "\n".join(f"  - {i}" for i in self.issues)
        super().__init__(f"{len(self.issues)} problem(s) in the desired state; "
                         f"nothing was sent to the cluster:\n{lines}")


@dataclass
class Desired:
    """One object the user wants, ready to apply (labels set, namespace filled in)."""

    kind: Kind
    manifest: dict[str, Any]
    location: Location

    @property
    def namespace(self) -> str | None:
        return self.manifest["metadata"].get("namespace")

    @property
    def name(self) -> str:
        return self.manifest["metadata"]["name"]

    @property
    def key(self) -> tuple[str, str, str | None, str]:
        return (self.kind.api_version, self.kind.kind, self.namespace, self.name)


@dataclass
class DesiredState:
    stack: str
    objects: list[Desired] = field(default_factory=list)
    target: Target = KVTOOL  # whose VM API the VirtualMachines are for (kvtool.io or kubevirt.io)
    # KubeVirt documents read as kvtool's: (where, what it was, e.g. "kubevirt.io/v1 VirtualMachineInstance").
    converted: list[tuple[Location, str]] = field(default_factory=list)

    def conversion_note(self) -> str | None:
        """One sentence for the plan output when KubeVirt documents were converted, else None."""
        if not self.converted:
            return None
        kinds = sorted({what for _, what in self.converted})
        sources = sorted({loc.source for loc, _ in self.converted})
        ours = "VirtualMachines and VirtualMachinePools" if any("Pool" in k for k in kinds) else "VirtualMachines"
        return (f"Read {len(self.converted)} KubeVirt document(s) ({', '.join(kinds)}) as kvtool's {ours} "
                f"(a bare VirtualMachineInstance runs as a VM: runStrategy Always, or its kvtool.io/run-strategy "
                f"annotation): {', '.join(sources)}. "
                "`kvtool convert` writes them out.")


def validate_stack(stack: str) -> str:
    if not DNS_LABEL.match(stack) or len(stack) > 63:
        raise KvtoolError(f"stack name {stack!r} is invalid: use a DNS-1123 label (lowercase letters, digits, '-'; "
                          "at most 63 characters)")
    return stack


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; directories → their YAML/JSON files, recursively, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in YAML_SUFFIXES))
        elif p.is_file() or str(p) == "-":
            out.append(p)
        else:
            raise KvtoolError(f"{p}: no such file or directory")
    return out


# Plain scalars YAML 1.1 turns into something other than a string ("no" -> False, "0123" -> 83).
_SURPRISING_TAGS = {
    "tag:yaml.org,2002:bool": "the boolean",
    "tag:yaml.org,2002:int": "the number",
    "tag:yaml.org,2002:float": "the number",
    "tag:yaml.org,2002:timestamp": "the date",
}
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


class _LeftToPyYAML(Exception):
    """A node the one-walk builder does not build itself: the document goes the two-walk way."""
# Strings to PyYAML (YAML 1.1) but numbers to YAML 1.2 readers such as kubectl: 1e3, 0o17, .inf.
_YAML12_NUMBER = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|0o[0-7]+|0x[0-9a-fA-F]+"
                            r"|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")


def _names_a_string(path: tuple[str | int, ...]) -> bool:
    """Where Kubernetes wants a string that users write bare: metadata's names, label and annotation values."""
    return ((len(path) >= 2 and path[-2] == "metadata" and path[-1] in ("name", "namespace", "generateName"))
            or (len(path) >= 3 and path[-3] == "metadata" and path[-2] in ("labels", "annotations")))


# Far beyond any manifest; what lies past them (an alias bomb, a structure without end) is refused, not expanded.
MAX_DEPTH = 64
MAX_NODES = 100_000


class InputLoader(_BaseLoader):
    """PyYAML's safe loader that also reports, with line numbers, what it would silently accept: duplicate
    keys (the last one wins) and YAML 1.1 values in names (`name: no` is False, `0123` is 83).

    The problems of the document just read are in `problems` as (line, field path, message, is it
    a value that is not a string)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.problems: list[tuple[int, str, str, bool]] = []
        self.unusable = False
        self._sizes: dict[int, int] = {}  # node -> how many values it expands to
        self._built: dict[int, Any] = {}  # node -> its value, so an alias is the same object

    def construct_document(self, node: yaml.Node) -> Any:
        """The document, built and checked in one walk over its nodes; a document the walk leaves to PyYAML
        (merge keys, explicit collection tags, keys that are not scalars) is checked by a walk, then built by it."""
        self._start()
        try:
            value, size = self._walk(node, (), set(), build=True)
        except _LeftToPyYAML:
            self._start()
            _, size = self._walk(node, (), set(), build=False)
            return super().construct_document(node) if self._usable(node, size) else None
        finally:
            self._built = {}
            self.constructed_objects, self.recursive_objects, self.state_generators = {}, {}, []
        return value if self._usable(node, size) else None

    def _start(self) -> None:
        self.problems = []
        self.unusable = False
        self._sizes = {}
        self._built = {}

    def _usable(self, node: yaml.Node, size: int) -> bool:
        """Whether the document may be built: no cycle, depth or alias expansion past the limits (reported)."""
        if size > MAX_NODES and not self.unusable:
            self.unusable = True
            self.problems.append((node.start_mark.line + 1, "", f"the document expands to more than {MAX_NODES} "
                                                                "values through YAML aliases", False))
        self.problems.sort()
        return not self.unusable

    def _walk(self, node: yaml.Node, path: tuple[str | int, ...], active: set[int], build: bool) -> tuple[Any, int]:
        """(value, how many values it expands to, aliases counted each time) of a node and what it holds, checked on
        the way. build=False only checks (the value is None): for a document PyYAML builds."""
        key = id(node)
        if key in active:
            self.unusable = True
            self.problems.append((node.start_mark.line + 1, schema.format_path(path),
                                  "a YAML alias refers to a node that contains it (a structure without end)", False))
            return None, 1
        if key in self._sizes:
            return self._built.get(key), self._sizes[key]  # an alias of a node already walked: the same object
        if len(path) > MAX_DEPTH:
            self.unusable = True
            self.problems.append((node.start_mark.line + 1, schema.format_path(path[:MAX_DEPTH]),
                                  f"the document is nested deeper than {MAX_DEPTH} levels", False))
            return None, 1
        size = 1
        value: Any = None
        active.add(key)
        if isinstance(node, yaml.MappingNode):
            if build and node.tag != _MAP_TAG:
                raise _LeftToPyYAML
            value = {} if build else None
            seen: set[tuple[str, str]] = set()
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                    if build:
                        raise _LeftToPyYAML
                    continue
                if (key_node.tag, key_node.value) in seen:
                    self.problems.append((key_node.start_mark.line + 1, schema.format_path(path),
                                          f"duplicate key {key_node.value!r}", False))
                seen.add((key_node.tag, key_node.value))
                item, count = self._walk(value_node, (*path, key_node.value), active, build)
                size += count
                if build:
                    value[key_node.value if key_node.tag == _STR_TAG else self.construct_object(key_node)] = item
        elif isinstance(node, yaml.SequenceNode):
            if build and node.tag != _SEQ_TAG:
                raise _LeftToPyYAML
            value = [] if build else None
            for i, item_node in enumerate(node.value):
                item, count = self._walk(item_node, (*path, i), active, build)
                size += count
                if build:
                    value.append(item)
        elif isinstance(node, yaml.ScalarNode):
            if build:
                value = node.value if node.tag == _STR_TAG else self.construct_object(node)
            if not node.style and _names_a_string(path) and (what := self._surprise(node)):  # plain: no quotes
                field_path = schema.format_path(path)
                self.problems.append((node.start_mark.line + 1, field_path,
                                      f"{field_path} is {what}: quote it ('{node.value}')", True))
        active.discard(key)
        self._sizes[key] = size
        self._built[key] = value
        return value, size

    def _surprise(self, node: yaml.ScalarNode) -> str | None:
        """What a plain scalar turns into when that is not the string it looks like, or None."""
        if node.tag in _SURPRISING_TAGS:
            value = self.construct_object(node)
            return f"{_SURPRISING_TAGS[node.tag]} {str(value).lower() if isinstance(value, bool) else value}"
        if node.tag == _STR_TAG and _YAML12_NUMBER.fullmatch(node.value):
            return "a number to YAML 1.2 readers such as kubectl"
        return None


def read_documents(path: Path, text: str | None = None) -> tuple[list[tuple[int, Any]], list[InputIssue]]:
    """(index, document) pairs of a multi-document YAML file, skipping empty documents."""
    source = str(path)
    try:
        text = text if text is not None else path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return [], [InputIssue(Location(source, 0), "", f"cannot read: {exc}")]
    docs: list[tuple[int, Any]] = []
    issues: list[InputIssue] = []
    index = 0  # the document being read, also when reading it fails
    loader = InputLoader(text)
    try:
        while loader.check_data():
            doc = loader.get_data()
            issues += [(NotAStringIssue if not_a_string else InputIssue)(Location(source, index, line), field, message)
                       for line, field, message, not_a_string in loader.problems]
            if doc is not None:
                docs.append((index, doc))
            index += 1
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return docs, [*issues, InputIssue(Location(source, index), "", f"broken YAML: {where}{problem}")]
    finally:
        loader.dispose()
    return docs, issues


# A check beyond the schemas that a front end adds (e.g. kvtool.images.usage): manifest -> [(field, message)].
Check = Callable[[dict[str, Any]], list[tuple[str, str]]]


def load(paths: Sequence[str | Path] = (), objects: Sequence[Mapping[str, Any]] = (), *,
         stack: str = DEFAULT_STACK, namespace: str = "default", checks: Sequence[Check] = ()) -> DesiredState:
    """Read, normalise and validate the desired state (VirtualMachines as kvtool's; `retarget` addresses them
    to KubeVirt's API); raise InvalidInput listing every problem."""
    validate_stack(stack)
    issues: list[InputIssue] = []
    raw: list[tuple[Location, Any]] = []
    for path in expand_paths(paths):
        docs, errs = read_documents(path) if str(path) != "-" else read_documents(path, read_stdin())
        issues += errs
        raw += [(Location(str(path), i), d) for i, d in docs]
    raw += [(Location("<python>", i), copy.deepcopy(dict(o))) for i, o in enumerate(objects)]

    state = DesiredState(stack)
    seen: dict[tuple[str, str, str | None, str], Location] = {}
    # Values the YAML reader already reported (with their line): later checks of the same field say less.
    said = {(i.location.source, i.location.index, i.path) for i in issues if isinstance(i, NotAStringIssue)}
    for loc, doc in raw:
        for item_loc, item in unlist(loc, doc):
            if kubevirt.is_kubevirt(item) and item["kind"] not in REQUESTS:  # a request: refused as written
                converted = kubevirt.from_kubevirt(item)
                item = converted.manifest
                state.converted.append((item_loc, converted.source))
            obj, errs = normalise(item, item_loc, stack=stack, namespace=namespace)
            issues += [e for e in errs if not _already_said(said, e)]
            key = _identity(item, namespace)
            if key is not None and key in seen:
                issues.append(InputIssue(item_loc, "metadata.name",
                                         f"{key[1]} {key[2]}/{key[3]} is already defined in {seen[key]}"))
                continue
            if key is not None:
                seen[key] = item_loc
            if obj is not None:
                state.objects.append(obj)
                issues += [InputIssue(item_loc, field, message) for check in checks
                           for field, message in check(obj.manifest)]
    if issues:
        raise InvalidInput(issues)
    return state


def retarget(state: DesiredState, target: Target) -> DesiredState:
    """The VirtualMachines, checked as kvtool's, addressed to `target`'s VM API (KubeVirt's: kubevirt.io/v1, the
    same fields). Their templates carry the stack's labels too: KubeVirt's VMIs take the template's labels, not
    the VM's, and `kvtool status` finds them by those."""
    if target is state.target:
        return state
    pools = [InputIssue(obj.location, "kind", f"a VirtualMachinePool is kvtool's own kind, run by kvtool's "
                                              f"controller; the {target.name} target does not have it: plan its VMs "
                                              "one by one (a roster or Terraform's count)")
             for obj in state.objects if obj.kind is VIRTUAL_MACHINE_POOL]
    if pools:
        raise InvalidInput(pools)
    for obj in state.objects:
        if obj.kind is not state.target.vm:
            continue
        obj.manifest["apiVersion"] = target.vm.api_version
        obj.kind = target.vm
        if target is not KVTOOL:
            template = obj.manifest["spec"]["template"]
            labels = template.setdefault("metadata", {}).setdefault("labels", {})
            labels.update({k: obj.manifest["metadata"]["labels"][k] for k in (STACK_LABEL, MANAGED_BY_LABEL)})
    state.target = target
    return state


def _already_said(said: set[tuple[str, int, str]], issue: InputIssue) -> bool:
    loc = issue.location
    return any((loc.source, loc.index, issue.path[:n]) in said
               for n in range(1, len(issue.path) + 1) if issue.path[n:n + 1] in ("", ".", "["))


def _identity(doc: Any, namespace: str) -> tuple[str, str, str | None, str] | None:
    """(apiVersion, kind, namespace, name) of a raw document, when it has them, valid or not."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("metadata"), Mapping):
        return None
    kind = kind_for(str(doc.get("apiVersion")), str(doc.get("kind")))
    name = doc["metadata"].get("name")
    if kind is None or not isinstance(name, str):
        return None
    ns = doc["metadata"].get("namespace", namespace) if kind.namespaced else None
    if ns is not None and not isinstance(ns, str):
        return None  # normalise reports the namespace
    return (kind.api_version, kind.label, ns, name)


def read_stdin() -> str:
    import sys

    return sys.stdin.read()


def unlist(loc: Location, doc: Any) -> Iterable[tuple[Location, Any]]:
    """A `kind: List` document (as kubectl writes) stands for its items."""
    if isinstance(doc, Mapping) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        for item in doc["items"]:
            yield loc, item
    else:
        yield loc, doc


# Kinds kvtool runs but does not plan: what to do with one instead.
REQUESTS = {
    "VirtualMachineSnapshot": "`kvtool snapshot VM`, or `kubectl create -f` the file",
    "VirtualMachineRestore": "`kvtool restore VM --from SNAPSHOT`, or `kubectl create -f` the file",
    "VirtualMachineInstanceMigration": "`kvtool migrate VM`, or `kubectl create -f` the file",
}


def normalise(doc: Any, loc: Location, *, stack: str, namespace: str) -> tuple[Desired | None, list[InputIssue]]:
    """Check one document's identity and schema, and return it ready to apply."""
    if not isinstance(doc, Mapping):
        return None, [InputIssue(loc, "", f"expected a mapping with apiVersion and kind, got {type(doc).__name__}")]
    api_version, kind_name = doc.get("apiVersion"), doc.get("kind")
    kind = kind_for(str(api_version), str(kind_name))
    if kind is None or kind not in PLANNABLE:
        known = ", ".join(f"{k.kind} ({k.api_version})" for k in PLANNABLE)
        hint = ""
        if str(api_version).startswith(f"{kubevirt.GROUP}/"):
            hint = (f"; kvtool reads KubeVirt's {' and '.join(kubevirt.KINDS)} ({', '.join(kubevirt.VERSIONS)}), "
                    f"not {kind_name}")
        if isinstance(kind_name, str) and kind_name in REQUESTS:
            hint = (f"; a {kind_name} is a one-off request, not desired state: {REQUESTS[kind_name]}")
        return None, [InputIssue(loc, "kind", f"unknown kind {kind_name!r} (apiVersion {api_version!r}); "
                                              f"kvtool plans: {known}{hint}")]
    manifest: dict[str, Any] = doc if isinstance(doc, dict) else dict(doc)  # load() hands us our own copy
    manifest.pop("status", None)
    meta = manifest.get("metadata")
    if not isinstance(meta, dict):
        return None, [InputIssue(loc, "metadata", "missing metadata with a name")]
    for key in SERVER_METADATA:
        meta.pop(key, None)
    if isinstance(meta.get("annotations"), dict):
        meta["annotations"].pop(LAST_APPLIED, None)
        if not meta["annotations"]:
            meta.pop("annotations")
    issues: list[InputIssue] = []
    name = meta.get("name")
    if name is None or name == "":
        issues.append(InputIssue(loc, "metadata.name", "missing metadata.name"))
    elif not isinstance(name, str):
        issues.append(InputIssue(loc, "metadata.name", f"metadata.name must be a string, got {name!r}"))
    elif not kind.schema and (not DNS_SUBDOMAIN.match(name) or len(name) > 253):
        # kvtool's own kinds check names through the schema's rule (the CRD's CEL rule's twin).
        issues.append(InputIssue(loc, "metadata.name",
                                 f"{name!r} is not a valid name: use lowercase letters, digits, '-' and '.', "
                                 "starting and ending with a letter or digit, at most 253 characters"))
    if kind.namespaced:
        ns = meta.setdefault("namespace", namespace)
        if not isinstance(ns, str) or not DNS_LABEL.match(ns) or len(ns) > 63:
            issues.append(InputIssue(loc, "metadata.namespace", f"{ns!r} is not a valid namespace name"))
    labels = meta.setdefault("labels", {})
    if not isinstance(labels, dict):
        issues.append(InputIssue(loc, "metadata.labels", "expected a mapping of label names to strings"))
    else:
        if labels.get(STACK_LABEL, stack) != stack:
            issues.append(InputIssue(loc, f"metadata.labels.{STACK_LABEL}",
                                     f"says stack {labels[STACK_LABEL]!r} but this plan is for stack {stack!r}"))
        labels[STACK_LABEL] = stack
        labels[MANAGED_BY_LABEL] = MANAGED_BY
    if kind.schema and isinstance(labels, dict):
        issues += [InputIssue(loc, i.path, i.message) for i in schema.validate(manifest, kind.schema)]
    if kind.kind == "Secret":
        issues += _fold_string_data(manifest, loc)
    if kind.kind == "VirtualMachine":
        issues += _expiry_issues(manifest, loc)
    return (None if issues else Desired(kind, manifest, loc)), issues


def _expiry_issues(manifest: dict[str, Any], loc: Location) -> list[InputIssue]:
    """The lab expiry annotations (kvtool.api.expiry) must be readable: the controller acts on them unattended."""
    annotations = manifest["metadata"].get("annotations")
    if not isinstance(annotations, dict):
        return []
    try:
        expiry.deadline(manifest)
    except expiry.ExpiryError as exc:
        return [InputIssue(loc, f"metadata.annotations.{exc.annotation}", str(exc).split(": ", 1)[1])]
    value = annotations.get(expiry.ON_EXPIRY)
    if value is not None and value not in expiry.POLICIES:
        return [InputIssue(loc, f"metadata.annotations.{expiry.ON_EXPIRY}",
                           f"{value!r} is not one of: {', '.join(expiry.POLICIES)}")]
    return []


def _fold_string_data(manifest: dict[str, Any], loc: Location) -> list[InputIssue]:
    """The server turns stringData into data; do it first so plans compare like with like."""
    string_data = manifest.pop("stringData", None)
    if string_data is None:
        return []
    if not isinstance(string_data, dict) or not all(isinstance(v, str) for v in string_data.values()):
        return [InputIssue(loc, "stringData", "expected a mapping of keys to strings")]
    data = manifest.setdefault("data", {})
    for key, value in string_data.items():
        data[key] = base64.b64encode(value.encode()).decode()
    return []
