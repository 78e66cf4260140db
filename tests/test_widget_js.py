"""The widget's own JavaScript tests (node's built-in test runner), as part of the suite."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_widget_unit_tests_pass_under_node() -> None:
    node = shutil.which("node") or shutil.which("nodejs")
    assert node is not None, "node is needed for the widget tests (./bootstrap installs nodejs)"
    tests = sorted(str(path) for path in (ROOT / "widget-tests").glob("*.test.mjs"))
    assert tests, "no widget tests found"
    result = subprocess.run(
        [node, "--test", *tests], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
