"""pyproject.toml's dependencies: exact pins where unwall patches private internals, at what
is installed (what the suite runs with); floors above releases with known holes, met."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
#: Patched in unwall/transport (aiortc_engine/, quic.py, reordering.py, bbr.py), or what the patches
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


# -- the lock: exactly what CI tested ---------------------------------------------------------

LOCK = PYPROJECT.parent / "requirements.lock"


def _locked() -> dict[str, str]:
    """{normalized name: version} of requirements.lock."""
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", LOCK.read_text(), re.MULTILINE)
    return {name.lower().replace("_", "-"): version for name, version in pins}


def test_the_lock_holds_every_dependency_with_a_hash() -> None:
    locked = _locked()
    assert LOCK.read_text().startswith("# Written by ./bootstrap lock")
    for name in _requirements():
        assert name in locked, f"{name} is in pyproject.toml but not in requirements.lock"
    entries = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text().split("\n\n", 1)[-1])
    for entry in entries:
        if "==" in entry.split("\n", 1)[0]:
            assert "--hash=sha256:" in entry, f"no hash for {entry.splitlines()[0]}"
    assert "unwall @" not in LOCK.read_text()  # the project comes from the checkout


def test_the_lock_meets_pyproject_and_is_what_is_installed() -> None:
    """bootstrap installs requirements.lock (--require-hashes): the suite runs with exactly
    the lock, and the lock within pyproject.toml's pins and floors."""
    locked = _locked()
    for name, spec in _requirements().items():
        version = locked[name]
        if spec.startswith("=="):
            assert version == spec[2:], f"{name}: pyproject {spec}, lock {version}"
        floor = re.search(r">=([0-9.]+)", spec)
        if floor:
            assert _version(version) >= _version(floor[1]), f"{name}: lock {version} < {spec}"
    for name, version in locked.items():
        assert metadata.version(name) == version, f"{name}: lock {version}, installed"


def test_pip_check_finds_only_the_one_known_conflict() -> None:
    """The lock holds cryptography 51 beside pyOpenSSL 26.4, which says <51 (pyproject.toml,
    [tool.uv]): that, and nothing else, is inconsistent in what is installed."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "pip", "check", "--disable-pip-version-check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    problems = [line for line in done.stdout.splitlines() if line.strip()]
    override = tomllib.loads(PYPROJECT.read_text())["tool"]["uv"]["override-dependencies"]
    assert override == [f"cryptography=={metadata.version('cryptography')}"]
    assert problems == [
        f"pyopenssl {metadata.version('pyopenssl')} has requirement cryptography<51,>=49.0.0, "
        f"but you have cryptography {metadata.version('cryptography')}."
    ], done.stdout
