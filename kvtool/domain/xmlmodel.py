"""A small declarative XML model, the virtinst way.

Each libvirt object is a class that names its element (``TAG``) and declares
fields bound to locations inside it (``"./driver/@cache"``, ``"./cmdline"``,
``"./readonly"``). An instance is only a view on an ElementTree element: setting
a field writes the XML, reading it reads the XML. So ``parse()`` keeps every bit
of XML the class does not model, and nothing is ever built by string
formatting - ElementTree does all quoting and escaping.

New elements are inserted in the order the class declares its fields and
children, so output is stable and readable whatever order a caller sets values.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any, ClassVar, Generic, TypeVar

from kvtool.domain.xmlfields import (  # re-exported: device modules declare fields from here
    ABSOLUTE_PATH,
    MAC_ADDRESS,
    USER_ALIAS,
    Flag,
    Int,
    Presence,
    Text,
    XMLField,
    XMLModelError,
    _split,
)

__all__ = ["ABSOLUTE_PATH", "MAC_ADDRESS", "USER_ALIAS", "Child", "Children", "Flag", "Int", "Presence", "Text",
           "XMLField", "XMLModelError", "XMLObject", "all_classes"]


T = TypeVar("T", bound="XMLObject")


class _ChildDescriptor(Generic[T]):
    """Child objects of one class, found at `parent`/<cls.TAG>."""

    def __init__(self, cls: type[T], parent: str = ".") -> None:
        self.cls = cls
        self.parent_steps, attr = _split(parent)
        if attr:
            raise ValueError(f"child objects live under an element, not an attribute: {parent!r}")
        self.steps = (*self.parent_steps, cls.TAG)
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name


class Children(_ChildDescriptor[T]):
    """A list of child objects; read it as a list, grow it with XMLObject.add()."""

    def __get__(self, obj: XMLObject | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        parent = obj._find(self.parent_steps)
        return [] if parent is None else [obj._wrap(self.cls, e) for e in parent.findall(self.cls.TAG)]


class Child(_ChildDescriptor[T]):
    """At most one child object; assign an instance (or None) to set it."""

    def __get__(self, obj: XMLObject | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        element = obj._find(self.steps)
        return None if element is None else obj._wrap(self.cls, element)

    def __set__(self, obj: XMLObject, value: T | None) -> None:
        if value is not None and not isinstance(value, self.cls):
            raise XMLModelError(f"{type(obj).__name__}.{self.name}: expected {self.cls.__name__}")
        old, parent = obj._find(self.steps), obj._find(self.parent_steps)
        if old is not None and parent is not None:
            parent.remove(old)
        if value is not None:
            obj._insert(self.parent_steps, value)
        else:
            obj._prune(self.parent_steps)


class XMLObject:
    """Base of every modelled libvirt element. Subclasses set TAG and declare fields and children."""

    TAG: ClassVar[str] = ""
    # (parent steps) -> ordered child tags, derived from declaration order; see __init_subclass__.
    _ORDER: ClassVar[dict[tuple[str, ...], list[str]]] = {}
    _FIELDS: ClassVar[dict[str, XMLField]] = {}
    _CHILDREN: ClassVar[dict[str, _ChildDescriptor[Any]]] = {}
    _ATTR_ORDER: ClassVar[dict[tuple[str, ...], list[str]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields: dict[str, XMLField] = {}
        children: dict[str, _ChildDescriptor[Any]] = {}
        order: dict[tuple[str, ...], list[str]] = {}
        attr_order: dict[tuple[str, ...], list[str]] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, XMLField):
                    fields[name] = value
                    steps = value.steps
                    if value.attr and value.attr not in attr_order.setdefault(steps, []):
                        attr_order[steps].append(value.attr)
                elif isinstance(value, _ChildDescriptor):
                    children[name] = value
                    steps = value.steps
                else:
                    continue
                for i, step in enumerate(steps):
                    tags = order.setdefault(steps[:i], [])
                    if step not in tags:
                        tags.append(step)
        cls._FIELDS, cls._CHILDREN, cls._ORDER, cls._ATTR_ORDER = fields, children, order, attr_order

    def __init__(self, **values: Any) -> None:
        if not self.TAG:
            raise TypeError(f"{type(self).__name__} declares no TAG")
        self._element = ET.Element(self.TAG)
        self._wrappers: dict[int, tuple[ET.Element, XMLObject]] = {}
        for name, value in values.items():
            if name not in self._FIELDS and name not in self._CHILDREN:
                raise TypeError(f"{type(self).__name__} has no field {name!r}")
            setattr(self, name, value)

    # --- construction from XML ---------------------------------------------------------------------------------
    @classmethod
    def from_element(cls: type[T], element: ET.Element) -> T:
        """Wrap an existing element (no copy): edits through the object change that element."""
        if element.tag != cls.TAG:
            raise XMLModelError(f"{cls.__name__}: expected <{cls.TAG}>, got <{element.tag}>")
        obj = cls.__new__(cls)
        obj._element = element
        obj._wrappers = {}
        return obj

    @classmethod
    def parse(cls: type[T], xml: str) -> T:
        """Parse a document; XML the class does not model is kept and written back unchanged."""
        try:
            element = ET.fromstring(xml)
        except ET.ParseError as exc:
            raise XMLModelError(f"{cls.__name__}: not well-formed XML: {exc}") from None
        return cls.from_element(element)

    # --- output -------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check required fields, values and each class's own rules, for this object and every child object.

        Values were checked when set; this re-checks them for parsed XML. The rules describe the XML we
        generate, so libvirt's live XML (pty paths, auto-added devices) may not pass.
        """
        for obj in self.walk():
            for field in obj._FIELDS.values():
                value = getattr(obj, field.name)
                if value is None and field.required:
                    raise XMLModelError(f"{field.qualname} is required")
                if value is not None:
                    field.to_text(value)
            obj.check()

    def check(self) -> None:
        """Rules across fields of one object; subclasses override. Raise XMLModelError."""

    def to_element(self) -> ET.Element:
        """A validated, indented deep copy of this object's XML."""
        self.validate()
        element = copy.deepcopy(self._element)
        ET.indent(element, space="  ")
        return element

    def to_xml(self) -> str:
        return ET.tostring(self.to_element(), encoding="unicode") + "\n"

    # --- children -------------------------------------------------------------------------------------------------
    def add(self, child: XMLObject) -> XMLObject:
        """Append a child object to the Children list declared for its class; returns the child."""
        for desc in self._CHILDREN.values():
            if isinstance(desc, Children) and type(child) is desc.cls:
                self._insert(desc.parent_steps, child)
                return child
        raise XMLModelError(f"{type(self).__name__} holds no list of {type(child).__name__}")

    def remove(self, child: XMLObject) -> None:
        for desc in self._CHILDREN.values():
            parent = self._find(desc.parent_steps)
            if parent is not None and child._element in list(parent):
                parent.remove(child._element)
                self._prune(desc.parent_steps)
                return
        raise XMLModelError(f"{type(child).__name__} is not a child of this {type(self).__name__}")

    def walk(self) -> Iterator[XMLObject]:
        """This object, then every modelled descendant, depth first."""
        yield self
        for desc in self._CHILDREN.values():
            value = getattr(self, desc.name)
            for child in value if isinstance(value, list) else [value] if value is not None else []:
                yield from child.walk()

    def set_fields(self) -> dict[str, Any]:
        """Fields that currently have a value (used by the coverage test)."""
        values = {name: getattr(self, name) for name in self._FIELDS}
        return {name: value for name, value in values.items() if value is not None}

    # --- element plumbing ---------------------------------------------------------------------------------------
    def _wrap(self, cls: type[T], element: ET.Element) -> T:
        cached = self._wrappers.get(id(element))
        if cached is not None and cached[0] is element and type(cached[1]) is cls:
            return cached[1]
        obj = cls.from_element(element)
        self._wrappers[id(element)] = (element, obj)
        return obj

    def _find(self, steps: tuple[str, ...]) -> ET.Element | None:
        element: ET.Element | None = self._element
        for step in steps:
            assert element is not None
            element = element.find(step)
            if element is None:
                return None
        return element

    def _ensure(self, steps: tuple[str, ...]) -> ET.Element:
        element = self._element
        for i, step in enumerate(steps):
            found = element.find(step)
            if found is None:
                found = ET.Element(step)
                self._place(element, steps[:i], found)
            element = found
        return element

    def _insert(self, parent_steps: tuple[str, ...], child: XMLObject) -> None:
        if any(child._element is e for e in self._element.iter()):
            raise XMLModelError(f"{type(child).__name__} is already part of this document")
        self._place(self._ensure(parent_steps), parent_steps, child._element)

    def _place(self, parent: ET.Element, parent_steps: tuple[str, ...], new: ET.Element) -> None:
        """Insert `new` after its last earlier-or-equal sibling in declaration order (unknown tags stay put)."""
        order = self._ORDER.get(parent_steps, [])
        rank = order.index(new.tag) if new.tag in order else len(order)
        position = len(parent)
        for i, sibling in enumerate(parent):
            if sibling.tag in order and order.index(sibling.tag) > rank:
                position = i
                break
        parent.insert(position, new)

    def _sort_attributes(self, steps: tuple[str, ...], element: ET.Element) -> None:
        """Declared attributes first, in declaration order, so output does not depend on the order of sets."""
        order = self._ATTR_ORDER.get(steps, [])
        if len(element.attrib) < 2:
            return
        items = sorted(element.attrib.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
        element.attrib.clear()
        element.attrib.update(items)

    def _clear(self, steps: tuple[str, ...], attr: str | None) -> None:
        element = self._find(steps)
        if element is None:
            return
        if attr:
            element.attrib.pop(attr, None)
        else:
            element.text = None
        self._prune(steps)

    def _prune(self, steps: tuple[str, ...]) -> None:
        """Remove elements along `steps` that were left empty, deepest first (never the object's own)."""
        for depth in range(len(steps), 0, -1):
            element = self._find(steps[:depth])
            parent = self._find(steps[: depth - 1])
            if element is None or parent is None:
                continue
            if len(element) or element.attrib or (element.text or "").strip():
                return
            parent.remove(element)


def all_classes(root: type[XMLObject] = XMLObject) -> list[type[XMLObject]]:
    """Every concrete model class (those with a TAG), for the field-coverage test."""
    found: list[type[XMLObject]] = []
    for sub in root.__subclasses__():
        if sub.TAG:
            found.append(sub)
        found.extend(all_classes(sub))
    return found

