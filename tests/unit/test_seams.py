"""Each swappable engine is imported in one place only (its seam), and a broker without
--redis does not load redis or the QUIC stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "unwall"

#: engine -> where (relative to src/unwall) it may be imported: modules, and packages (a
#: path ending in "/"); each place listed imports it
SEAMS = {
    "redis": {"broker/redis_pool.py"},
    "aiortc": {"transport/aiortc_engine/"},
    # the aiortc engine's ICE, and natcheck's STUN messages (aioice.stun, no patches)
    "aioice": {"transport/aiortc_engine/", "transport/natcheck.py"},
    # the broker channel's HTTP client (a Chrome's TLS)
    "curl_cffi": {"transport/brokerhttp.py"},
}


def _place(path: str, places: set[str]) -> str | None:
    """The place in `places` that holds `path`, if any."""
    for place in places:
        if path == place or (place.endswith("/") and path.startswith(place)):
            return place
    return None


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_engines_are_imported_only_in_their_seams() -> None:
    found: dict[str, set[str]] = {engine: set() for engine in SEAMS}
    for path in SRC.rglob("*.py"):
        imported = _imports(path)
        for engine in SEAMS:
            if engine in imported:
                found[engine].add(path.relative_to(SRC).as_posix())
    outside = {
        engine: {path for path in paths if _place(path, SEAMS[engine]) is None}
        for engine, paths in found.items()
    }
    assert outside == {engine: set() for engine in SEAMS}
    used = {
        engine: {_place(path, SEAMS[engine]) for path in paths} for engine, paths in found.items()
    }
    assert used == SEAMS


def test_a_lone_broker_loads_neither_redis_nor_quic() -> None:
    code = (
        "import sys; import unwall.broker.server; "
        "print(sorted(m for m in ('redis', 'aioquic', 'aiortc') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
