"""Pick kernel modules out of an unpacked Debian kernel package, in load order.

The package ships no modules.dep (depmod runs at install time, and we never
install it), so dependencies are read from each module's own `.modinfo` ELF
section, the same field `modinfo -F depends` prints. Built-in drivers are
skipped: insmod of a driver that is built in fails, and it is not needed.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

from kvtool.errors import BuildError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Module:
    """One loadable module: its name (as the kernel spells it), file and direct dependencies."""

    name: str
    path: Path
    depends: tuple[str, ...]


def modinfo(path: Path) -> dict[str, str]:
    """The key=value strings of a module's .modinfo section (last value wins for repeated keys)."""
    data = path.read_bytes()
    section = _elf_section(data, b".modinfo")
    if section is None:
        raise BuildError(f"{path} has no .modinfo section; is it a kernel module?")
    info: dict[str, str] = {}
    for raw in section.split(b"\0"):
        key, sep, value = raw.partition(b"=")
        if sep:
            info[key.decode(errors="replace")] = value.decode(errors="replace")
    return info


def _elf_section(data: bytes, wanted: bytes) -> bytes | None:
    """Contents of a named section of a 64-bit little-endian ELF file, or None."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BuildError("not a 64-bit little-endian ELF file")
    e_shoff, = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        base = e_shoff + i * e_shentsize
        name, = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size

    _, str_off, str_size = header(e_shstrndx)
    names = data[str_off:str_off + str_size]
    for i in range(e_shnum):
        name_off, offset, size = header(i)
        if names[name_off:names.index(b"\0", name_off)] == wanted:
            return data[offset:offset + size]
    return None


class ModuleTree:
    """The modules of one kernel (<root>/lib/modules/<version>/), indexed by module name."""

    def __init__(self, modules_dir: Path) -> None:
        self.dir = modules_dir
        if not (modules_dir / "kernel").is_dir():
            raise BuildError(f"{modules_dir} does not look like a kernel's module tree (no kernel/ inside)")
        # Module names use "_" where file names may use "-" (the kernel treats them as equal).
        self._files = {_canonical(p.name.removesuffix(".ko")): p for p in modules_dir.rglob("*.ko")}
        builtin_file = modules_dir / "modules.builtin"
        lines = builtin_file.read_text().split() if builtin_file.is_file() else []
        self.builtin = frozenset(_canonical(Path(line).name.removesuffix(".ko")) for line in lines)
        self._cache: dict[str, Module] = {}

    def module(self, name: str) -> Module:
        name = _canonical(name)
        if name not in self._cache:
            path = self._files.get(name)
            if path is None:
                raise BuildError(f"kernel module {name!r} is neither built in nor shipped in {self.dir}")
            deps = modinfo(path).get("depends", "")
            self._cache[name] = Module(name, path, tuple(_canonical(d) for d in deps.split(",") if d))
        return self._cache[name]

    def load_order(self, wanted: list[str]) -> list[Module]:
        """`wanted` plus everything they depend on, dependencies first, built-ins left out."""
        order: list[Module] = []
        done: set[str] = set()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            name = _canonical(name)
            if name in done or name in self.builtin:
                return
            if name in chain:
                raise BuildError(f"kernel module dependency cycle: {' -> '.join((*chain, name))}")
            mod = self.module(name)
            for dep in mod.depends:
                visit(dep, (*chain, name))
            done.add(name)
            order.append(mod)

        for name in wanted:
            if _canonical(name) in self.builtin:
                log.info("kernel module %s is built in", name)
            visit(name, ())
        return order


def _canonical(name: str) -> str:
    return name.replace("-", "_")
