"""The coturn configuration unwall ships (src/unwall/broker/coturn.conf), read as coturn reads
it; tests/integration/test_turn_abuse.py runs it against a real coturn."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from unwall.broker.coturn import (
    allowed_peers,
    instance_config,
    peer_range,
    ranges,
    shipped_config,
    write_config,
)
from unwall.lab import manager
from unwall.lab.topology import LabAddresses

# IANA's IPv4 and IPv6 special-purpose registries (RFC 6890 and updates), the ranges that are
# not globally reachable, plus multicast, reserved space and the prefixes that embed IPv4.
SPECIAL = [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "255.255.255.255/32",
    "::1/128", "::/96", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64",
    "100:0:0:1::/64", "2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20", "5f00::/16",
    "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
]  # fmt: skip
# coturn reads an all-zero first address as "from anything", of either family; it refuses
# the all-zero peer itself (checked against a real coturn).
ZERO = {ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::")}


def _option_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


@pytest.mark.parametrize("network", SPECIAL)
def test_every_special_purpose_range_is_denied(network: str) -> None:
    net = ipaddress.ip_network(network)
    denied = ranges(shipped_config(), "denied-peer-ip")
    first = net.network_address
    if first in ZERO:
        first = first + 1
    assert any(
        low.version == net.version and low <= first and net.broadcast_address <= high
        for low, high in denied
    ), f"{network} is not denied"


def test_no_range_starts_at_zero() -> None:
    assert not [low for low, _ in ranges(shipped_config(), "denied-peer-ip") if low in ZERO]


def test_ranges_are_well_formed_and_open_nothing() -> None:
    text = shipped_config()
    for low, high in ranges(text, "denied-peer-ip"):
        assert low.version == high.version and low <= high
    assert ranges(text, "allowed-peer-ip") == []


def test_what_it_turns_on_and_off() -> None:
    options = {line.split("=", 1)[0] for line in _option_lines(shipped_config())}
    for wanted in (
        "use-auth-secret", "no-tcp-relay", "no-multicast-peers", "no-cli", "user-quota",
        "total-quota", "max-bps", "no-stdout-log", "no-dynamic-ip-list",
    ):  # fmt: skip
        assert wanted in options, wanted
    for unwanted in (
        "static-auth-secret", "allow-loopback-peers", "no-auth", "allowed-peer-ip",
        "cli-password", "web-admin", "listening-ip", "relay-ip",
    ):  # fmt: skip
        assert unwanted not in options, unwanted


def test_an_instance_adds_its_lines_after_the_shipped_ones(tmp_path: Path) -> None:
    text = instance_config(["realm=x", *allowed_peers(["127.0.0.0/8"])], {"use-auth-secret"})
    lines = _option_lines(text)
    assert "use-auth-secret" not in lines
    assert lines[-2:] == ["realm=x", "allowed-peer-ip=127.0.0.0-127.255.255.255"]
    assert peer_range("fe80::/10") == "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    path = write_config(tmp_path / "a" / "turn.conf", text)
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_labs_turn_server_opens_only_the_labs_networks(tmp_path: Path) -> None:
    path = manager.turn_config(LabAddresses(), tmp_path, "lab-secret")
    text = path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    assert "static-auth-secret=lab-secret" in _option_lines(text)
    allowed = ranges(text, "allowed-peer-ip")
    lab = [ipaddress.ip_network(n) for n in ("203.0.113.0/24", "198.51.100.0/24")]
    for low, high in allowed:
        assert any(low in n and high in n for n in lab), (low, high)
    assert ranges(text, "denied-peer-ip") == ranges(shipped_config(), "denied-peer-ip")
    assert manager._turn_env({"secret": "lab-secret"}) == {"UNWALL_TURN_SECRET": "lab-secret"}
    assert "lab-secret" not in " ".join(manager._turn_args({"secret": "lab-secret", "urls": []}))
