"""Field types of the declarative XML model: where a value lives in an element and how it is written.

A field is a descriptor on an XMLObject subclass; reading it reads the XML,
setting it checks the value (type, choices, pattern, range, XML-legal
characters) and writes it. Nothing here formats XML text: ElementTree quotes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from kvtool import errors

if TYPE_CHECKING:
    from kvtool.domain.xmlmodel import XMLObject

# Characters XML 1.0 cannot carry at all; ElementTree would write them and produce a broken document.
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_STEP = re.compile(r"\{[^}]*\}[^/{}@]+|[^/{}@]+")

# Shared value patterns for fields that become paths, names or device ids on the host.
ABSOLUTE_PATH = r"/[^\x00-\x1f\x7f]{0,4095}"
MAC_ADDRESS = r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}"
USER_ALIAS = r"ua-[A-Za-z0-9_.-]{1,80}"


class XMLModelError(errors.KvtoolError):
    """A value does not fit the libvirt XML it is meant for (a bug in the caller, or bad parsed XML)."""


def _split(location: str) -> tuple[tuple[str, ...], str | None]:
    """'./a/b/@c' -> (('a', 'b'), 'c'); './a' -> (('a',), None); '.' -> ((), None)."""
    if location != "." and not location.startswith("./"):
        raise ValueError(f"location must start with './': {location!r}")
    rest = location[2:]
    attr: str | None = None
    if "@" in rest:
        rest, attr = rest.rsplit("@", 1)
        rest = rest.rstrip("/")
    steps = tuple(_STEP.findall(rest)) if rest else ()
    if "/".join(steps) != rest:
        raise ValueError(f"unsupported location: {location!r}")
    return steps, attr


class XMLField:
    """One value at one location: an attribute, or the text of an element (which may be the object's own)."""

    def __init__(self, location: str, *, required: bool = False, doc: str = "") -> None:
        self.location = location
        self.steps, self.attr = _split(location)
        self.required = required
        self.doc = doc
        self.name = ""
        self.owner: type[XMLObject] | None = None

    def __set_name__(self, owner: type[XMLObject], name: str) -> None:
        self.name = name
        self.owner = owner

    @property
    def qualname(self) -> str:
        return f"{self.owner.__name__ if self.owner else '?'}.{self.name}"

    # Conversions; subclasses override.
    def to_text(self, value: Any) -> str:
        text = str(value)
        if _XML_ILLEGAL.search(text):
            raise XMLModelError(f"{self.qualname}: {text!r} contains characters XML cannot carry")
        return text

    def from_text(self, text: str) -> Any:
        return text

    def __get__(self, obj: XMLObject | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        element = obj._find(self.steps)
        if element is None:
            return None
        text = element.get(self.attr) if self.attr else element.text
        return None if text is None else self.from_text(text)

    def __set__(self, obj: XMLObject, value: Any) -> None:
        if value is None:
            obj._clear(self.steps, self.attr)
            return
        text = self.to_text(value)
        element = obj._ensure(self.steps)
        if self.attr:
            element.set(self.attr, text)
            obj._sort_attributes(self.steps, element)
        else:
            element.text = text


class Text(XMLField):
    """A string, optionally limited to `choices` or a full-match `pattern`."""

    def __init__(self, location: str, *, choices: tuple[str, ...] | None = None, pattern: str | None = None,
                 required: bool = False, doc: str = "") -> None:
        super().__init__(location, required=required, doc=doc)
        self.choices = choices
        self.pattern = re.compile(pattern) if pattern else None

    def to_text(self, value: Any) -> str:
        if not isinstance(value, str):
            raise XMLModelError(f"{self.qualname}: expected a string, got {type(value).__name__}")
        if self.choices is not None and value not in self.choices:
            raise XMLModelError(f"{self.qualname}: {value!r} is not one of {', '.join(self.choices)}")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise XMLModelError(f"{self.qualname}: {value!r} does not match {self.pattern.pattern}")
        return super().to_text(value)


class Int(XMLField):
    """A decimal integer within [minimum, maximum]."""

    def __init__(self, location: str, *, minimum: int | None = None, maximum: int | None = None,
                 required: bool = False, doc: str = "") -> None:
        super().__init__(location, required=required, doc=doc)
        self.minimum = minimum
        self.maximum = maximum

    def to_text(self, value: Any) -> str:
        if not isinstance(value, int) or isinstance(value, bool):
            raise XMLModelError(f"{self.qualname}: expected an integer, got {type(value).__name__}")
        if self.minimum is not None and value < self.minimum:
            raise XMLModelError(f"{self.qualname}: {value} is below {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise XMLModelError(f"{self.qualname}: {value} is above {self.maximum}")
        return str(value)

    def from_text(self, text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise XMLModelError(f"{self.qualname}: {text!r} is not an integer") from None


class Flag(XMLField):
    """A boolean written as a word pair: yes/no (default) or on/off."""

    def __init__(self, location: str, *, words: tuple[str, str] = ("yes", "no"), required: bool = False,
                 doc: str = "") -> None:
        super().__init__(location, required=required, doc=doc)
        self.words = words

    def to_text(self, value: Any) -> str:
        if not isinstance(value, bool):
            raise XMLModelError(f"{self.qualname}: expected a bool, got {type(value).__name__}")
        return self.words[0] if value else self.words[1]

    def from_text(self, text: str) -> bool:
        if text not in self.words:
            raise XMLModelError(f"{self.qualname}: {text!r} is not {' or '.join(self.words)}")
        return text == self.words[0]


class Presence(XMLField):
    """True when an (empty) element exists, like <readonly/> or <acpi/>."""

    def __init__(self, location: str, *, doc: str = "") -> None:
        super().__init__(location, doc=doc)
        if self.attr or not self.steps:
            raise ValueError(f"a presence field needs an element location: {location!r}")

    def __get__(self, obj: XMLObject | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return obj._find(self.steps) is not None or None

    def __set__(self, obj: XMLObject, value: Any) -> None:
        if value is not None and not isinstance(value, bool):
            raise XMLModelError(f"{self.qualname}: expected a bool, got {type(value).__name__}")
        if value:
            obj._ensure(self.steps)
        else:
            element = obj._find(self.steps)
            if element is not None:
                parent = obj._find(self.steps[:-1])
                assert parent is not None
                parent.remove(element)
                obj._prune(self.steps[:-1])
