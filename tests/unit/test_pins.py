"""pyproject.toml's dependencies: exact pins where unwall patches private internals, at what
is installed (what the suite runs with); floors above releases with known holes, met."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
#: Patched in unwall/transport (rtc.py, quic.py, reordering.py, bbr.py), or what the patches
#: rest on (aiortc's SRTP profiles come from pylibsrtp; its DTLS is pyOpenSSL's).
PINNED = ("aiortc", "aioice", "aioquic", "pylibsrtp", "pyopenssl")
#: Releases with known holes lie below these.
FLOORS = {"aiohttp": "3.14.4", "aioquic": "1.3", "h11": "0.16", "cryptography": "44.0.1"}


def _requirements() -> dict[str, str]:
    """{normalized name: version specifier} of the project's own dependencies."""
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    found = {}
    for dep in deps:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", dep)
        assert match, dep
        found[match[1].lower().replace("_", "-")] = match[2].replace(" ", "")
    return found


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


@pytest.mark.parametrize("name", PINNED)
def test_patched_dependencies_are_pinned_to_what_is_installed(name: str) -> None:
    spec = _requirements().get(name)
    assert spec is not None and spec.startswith("=="), f"{name} is not pinned: {spec}"
    assert spec[2:] == metadata.version(name), f"{name}: pinned {spec}, installed"


@pytest.mark.parametrize(("name", "floor"), FLOORS.items())
def test_floors_are_above_known_holes_and_met(name: str, floor: str) -> None:
    spec = _requirements()[name]
    allowed = re.search(r"(?:>=|==)([0-9.]+)", spec)
    assert allowed is not None, f"{name}: no floor in {spec!r}"
    assert _version(allowed[1]) >= _version(floor), f"{name}{spec} admits releases below {floor}"
    assert _version(metadata.version(name)) >= _version(floor)
