"""Each swappable engine is imported in one place only (its seam), and a broker without
--redis does not load redis or the QUIC stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "unwall"

#: engine -> the modules (relative to src/unwall) that may import it
SEAMS = {
    "redis": {"broker/redis_pool.py"},
    "aiortc": {"transport/rtc.py"},
}


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
    assert found == SEAMS


def test_a_lone_broker_loads_neither_redis_nor_quic() -> None:
    code = (
        "import sys; import unwall.broker.server; "
        "print(sorted(m for m in ('redis', 'aioquic', 'aiortc') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
