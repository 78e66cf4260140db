"""The coturn configuration unwall ships (``coturn.conf`` beside this module), and the
instances the lab and the tests make of it.

The file is what an operator installs (README, "Across NATs"): credentials only by coturn's
REST API scheme (the broker's --turn-secret), no relaying to any special-purpose address,
no TCP relay, quotas, no CLI. An instance is that file with its own lines appended (its
addresses, ports, files, the secret, and the networks it opens on purpose with
``allowed-peer-ip``), written to a file only its owner can read: a secret never goes on
coturn's command line.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Final

CONFIG_PATH: Final = Path(__file__).with_name("coturn.conf")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
IPRange = tuple[Address, Address]


def shipped_config() -> str:
    """The configuration file as shipped."""
    return CONFIG_PATH.read_text()


def _option(line: str) -> str | None:
    """The option a configuration line sets (None for a comment or a blank line)."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    return text.split("=", 1)[0].strip()


def peer_range(network: str) -> str:
    """A CIDR (or one address) as coturn's ``ip-ip`` range."""
    net = ipaddress.ip_network(network, strict=False)
    return f"{net.network_address}-{net.broadcast_address}"


def allowed_peers(networks: Iterable[str]) -> list[str]:
    """``allowed-peer-ip`` lines opening ``networks`` (CIDRs) although they are denied."""
    return [f"allowed-peer-ip={peer_range(network)}" for network in networks]


def instance_config(settings: Sequence[str], without: Collection[str] = ()) -> str:
    """The shipped configuration without the options named in ``without``, then
    ``settings`` (``option`` or ``option=value`` lines), which win over it."""
    kept = [line for line in shipped_config().splitlines() if _option(line) not in without]
    return "\n".join([*kept, "", "# --- this instance", *settings, ""])


def write_config(path: Path, text: str) -> Path:
    """Write a configuration (it may hold the secret) readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)
    return path


def ranges(text: str, option: str) -> list[IPRange]:
    """The address ranges a configuration's ``option`` lines (denied-peer-ip,
    allowed-peer-ip) name, as (first, last)."""
    found: list[IPRange] = []
    for line in text.splitlines():
        if _option(line) != option:
            continue
        value = line.split("=", 1)[1].strip()
        first, _, last = value.partition("-")
        low = ipaddress.ip_address(first.strip())
        high = ipaddress.ip_address(last.strip()) if last else low
        found.append((low, high))
    return found


__all__ = [
    "CONFIG_PATH",
    "allowed_peers",
    "instance_config",
    "peer_range",
    "ranges",
    "shipped_config",
    "write_config",
]
