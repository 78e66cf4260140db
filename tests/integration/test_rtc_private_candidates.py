"""The aiortc engine offers no private host address unless asked for (as browsers, with
their mDNS names, and Snowflake, which strips them): a machine with private and public
addresses, in a network namespace of this test's own (`unshare -n`, rtc_candidates.py).
The demo and the tests pin 127.0.0.1 and the lab TEST-NET addresses: pinned addresses are
asked for by name, and are offered."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
PRIVATE = {"10.20.30.40", "172.16.5.5", "192.168.7.7", "100.64.1.1", "169.254.7.7", "fd00::79"}
PUBLIC = {"198.51.100.79", "2001:db8::79"}

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root for a namespace"
)


@pytest.fixture(scope="module")
def seen() -> dict[str, Any]:
    run = subprocess.run(
        ["unshare", "-n", sys.executable, str(HERE / "rtc_candidates.py")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def _hosts(lines: list[str]) -> set[str]:
    return {str(ipaddress.ip_address(line.split()[4])) for line in lines if " typ host" in line}


def test_no_private_host_candidate_by_default(seen: dict[str, Any]) -> None:
    assert _hosts(seen["default"]["candidates"]) == PUBLIC, seen["default"]
    assert not any(address in line for line in seen["default"]["c"] for address in PRIVATE)
    # and with only public addresses offered, two peers still connect
    assert seen["carried"] == ["through"], seen


def test_private_host_candidates_when_asked_for(seen: dict[str, Any]) -> None:
    assert _hosts(seen["asked"]["candidates"]) == PUBLIC | PRIVATE, seen["asked"]


def test_a_pinned_private_address_is_offered(seen: dict[str, Any]) -> None:
    assert _hosts(seen["pinned"]["candidates"]) == {"10.20.30.40"}, seen["pinned"]
