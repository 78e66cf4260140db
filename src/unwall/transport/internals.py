"""The private internals of aiortc, aioice and aioquic that unwall replaces or calls, checked
before anything relies on them.

unwall reaches into its WebRTC and QUIC libraries: the aiortc engine
(`unwall.transport.aiortc_engine`) patches aiortc and aioice, and `quic`, `bbr` and
`reordering` reach into aioquic. pyproject.toml pins those libraries to the versions the
tests have seen; another release may rename or reshape a private, and a patch would then
fail in the middle of a connection, or quietly do nothing. So each place that patches first
says what it needs (`Needs`), and `Needs.verify` raises `IncompatibleDependency`, naming the
version pinned, the version found and what is gone, before anything is changed.

What is cheap to check is checked: that a module or class still has a function, method or
attribute (and that what is called is callable); the parameter names of what is replaced (a
replacement takes exactly what the library passes it) or called by keyword; and, for an
attribute that instances set at run time, that the class's own code still names it.
"""

from __future__ import annotations

import inspect
import logging
import re
import types
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import Any

log = logging.getLogger("unwall.internals")

#: How a user gets the pinned versions back.
REINSTALL = "reinstall with ./bootstrap"


class IncompatibleDependency(RuntimeError):
    """A library unwall patches lacks a private internal unwall needs (another version)."""


def installed_version(distribution: str) -> str:
    """The installed version of a distribution ("none" if it is not installed)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "none"


def pinned_version(distribution: str) -> str | None:
    """The version unwall's own metadata pins a dependency to (`name==version` in
    pyproject.toml, as installed); None if unwall is not installed or pins no version."""
    try:
        requirements = metadata.requires("unwall") or []
    except metadata.PackageNotFoundError:
        return None
    wanted = _normalized(distribution)
    for requirement in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;,]+)\s*", requirement)
        if match and _normalized(match[1]) == wanted:
            return match[2]
    return None


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _name(owner: Any) -> str:
    if isinstance(owner, types.ModuleType):
        return owner.__name__
    return str(getattr(owner, "__qualname__", type(owner).__qualname__))


def _names_in(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _names_in(constant)
    return names


def code_names(cls: type) -> set[str]:
    """Every name the library's own code in a class (and its bases) uses, and the names the
    class annotates: among them the attributes its methods set and read on instances.
    unwall's patches do not count."""
    names: set[str] = set()
    for klass in cls.__mro__:
        names.update(vars(klass).get("__annotations__", {}))
        for value in vars(klass).values():
            function = value.fget if isinstance(value, property) else value
            function = getattr(function, "__func__", function)
            code = getattr(function, "__code__", None)
            if code is None or str(getattr(function, "__module__", "")).startswith("unwall"):
                continue
            names |= _names_in(code)
    return names


_warned: set[str] = set()


class Needs:
    """What one patching module needs of one library. Each method notes what is missing;
    `verify` raises IncompatibleDependency naming all of it, or returns."""

    def __init__(self, distribution: str) -> None:
        self.distribution = distribution
        self.missing: list[str] = []

    def _lookup(self, owner: Any, name: str) -> tuple[bool, Any]:
        try:
            return True, getattr(owner, name)
        except AttributeError:
            self.missing.append(f"{_name(owner)}.{name} is gone")
            return False, None

    def attribute(self, owner: Any, *names: str) -> bool:
        """`owner` (a module or class) has these attributes; whether it has them all."""
        return all([self._lookup(owner, name)[0] for name in names])

    def require(self, condition: bool, problem: str) -> None:
        """Note `problem` unless `condition` holds (a shape no other method checks)."""
        if not condition:
            self.missing.append(problem)

    def function(
        self,
        owner: Any,
        name: str,
        *,
        params: Sequence[str] | None = None,
        takes: Iterable[str] = (),
    ) -> bool:
        """`owner.name` is callable; with `params`, its parameters are exactly these (what
        unwall replaces: the replacement takes what the library passes); with `takes`, it
        has these among them (what unwall calls by keyword). Whether all that holds."""
        found, value = self._lookup(owner, name)
        if not found:
            return False
        where = f"{_name(owner)}.{name}"
        if not callable(value):
            self.missing.append(f"{where} is no longer callable")
            return False
        before = len(self.missing)
        try:
            parameters = list(inspect.signature(value).parameters)
        except (TypeError, ValueError):  # no signature to read (a builtin): nothing to check
            return True
        if params is not None and parameters != list(params):
            self.missing.append(
                f"{where} takes ({', '.join(parameters)}), not ({', '.join(params)})"
            )
        lacking = [param for param in takes if param not in parameters]
        if lacking:
            self.missing.append(f"{where} no longer takes {', '.join(lacking)}")
        return len(self.missing) == before

    def instance_attributes(self, cls: type, *names: str) -> None:
        """Instances of `cls` have these attributes: the class has them, or its code still
        names them (attributes set in `__init__` and other methods are not on the class)."""
        used = code_names(cls)
        for name in names:
            if name not in used and not hasattr(cls, name):
                self.missing.append(f"{_name(cls)} no longer sets .{name}")

    def message(self) -> str:
        pinned = pinned_version(self.distribution)
        wanted = f"{self.distribution} {pinned}" if pinned else f"the {self.distribution} it pins"
        return (
            f"unwall needs {wanted} (found {installed_version(self.distribution)}): "
            f"{'; '.join(self.missing)}; {REINSTALL}"
        )

    def verify(self) -> None:
        """Raise IncompatibleDependency if anything is missing. With everything there on
        another version than the pinned one, say so once in the log and go on."""
        if self.missing:
            raise IncompatibleDependency(self.message())
        pinned = pinned_version(self.distribution)
        found = installed_version(self.distribution)
        if pinned is not None and found != pinned and self.distribution not in _warned:
            _warned.add(self.distribution)
            log.warning(
                "%s %s is installed where unwall pins %s (what the tests ran with); the "
                "internals unwall patches are all there, but untested: %s",
                self.distribution,
                found,
                pinned,
                REINSTALL,
            )
