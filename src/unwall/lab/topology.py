"""The lab's networks: namespaces joined by veth pairs, addressed from TEST-NET.

```
 censored (198.51.100.10/25) ── c0 ═ b0 ── box ── b1 ═╗
                                  198.51.100.1   203.0.113.1
                                                       ║  br0: the internet's one switch
 internet (203.0.113.254, service addresses) ──────── br0 (203.0.113.0/24)
                                                       ║
 vol1 (198.51.100.130) ── lan ═ home1 ── wan (203.0.113.101) ═╝   ... one per home
```

The box routes between the censored network and the internet and NATs the censored
network, as a company gateway does; each home is a router namespace with its own NAT in
front of one volunteer host, as a home router is. The NAT kinds (`NAT_KINDS`) are made with
the kernel's own NAT:
- `none`: no NAT; the inside network is routed from the internet (a public address);
- `port-restricted`: MASQUERADE (endpoint-independent mapping, as Linux keeps the source
  port, and address-and-port-dependent filtering: only replies come in);
- `symmetric`: MASQUERADE --random-fully (a new random port for every new destination);
- `full-cone`: MASQUERADE plus a DNAT of all unsolicited UDP to the one inside host (a
  home router's "DMZ host"): endpoint-independent mapping and filtering.
Forwarding is switched on inside lab namespaces only; nothing is joined to the host's own
network or its uplink.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

#: the lab's namespaces are named PREFIX...; UNWALL_LAB_PREFIX gives a second lab on the same
#: machine names of its own (with UNWALL_LAB_STATE for its state)
PREFIX = os.environ.get("UNWALL_LAB_PREFIX", "uwlab-")
CENSORED = PREFIX + "censored"
BOX = PREFIX + "box"
INTERNET = PREFIX + "internet"
NAMESPACES = (CENSORED, BOX, INTERNET)

CENSORED_IP = "198.51.100.10"
BOX_INSIDE_IP = "198.51.100.1"
BOX_OUTSIDE_IP = "203.0.113.1"
INTERNET_IP = "203.0.113.254"
CENSORED_NET = "198.51.100.0/25"
INTERNET_NET = "203.0.113.0/24"
HOMES_NET = "198.51.100.128/25"  # one /28 per home
MAX_HOMES = 8

NatKind = Literal["none", "full-cone", "port-restricted", "symmetric"]
NAT_KINDS: tuple[NatKind, ...] = ("none", "full-cone", "port-restricted", "symmetric")

NETNS_ETC = Path("/etc/netns")


class LabError(Exception):
    pass


@dataclass(frozen=True)
class Service:
    """A name in the lab's DNS zone and the internet address that serves it."""

    name: str
    address: str


@dataclass
class LabAddresses:
    dns: str = "203.0.113.53"
    stun: str = "203.0.113.3"
    stun_alt: str = "203.0.113.4"  # coturn's second address, for RFC 5780 tests
    turn: str = "203.0.113.5"
    broker: str = "203.0.113.20"
    egress: str = "203.0.113.21"
    volunteers: str = "203.0.113.22"
    front: str = "203.0.113.30"
    news: str = "203.0.113.80"  # the blocked news site
    open: str = "203.0.113.81"  # the allowed control site
    canary: str = "203.0.113.82"  # *.canary.test: names used once, for the privacy audit
    zone: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.zone = {
            "news.test": self.news,
            "open.test": self.open,
            "broker.test": self.broker,
            "egress.test": self.egress,
            "cdn.test": self.front,
            "stun.test": self.stun,
            "turn.test": self.turn,
        }

    def all(self) -> list[str]:
        return [
            self.dns,
            self.stun,
            self.stun_alt,
            self.turn,
            self.broker,
            self.egress,
            self.volunteers,
            self.front,
            self.news,
            self.open,
            self.canary,
        ]


def run(*argv: str, namespace: str | None = None, check: bool = True) -> str:
    if namespace is not None:
        argv = ("ip", "netns", "exec", namespace, *argv)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def lab_possible() -> str | None:
    """None if the lab can be built here, else why not."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces and netfilter): run it with sudo"
    for tool in ("ip", "iptables", "conntrack", "ethtool", "turnserver"):
        if shutil.which(tool) is None:
            return f"the lab needs {tool}; ./bootstrap installs it (apt-get)"
    return None


def namespaces_up() -> list[str]:
    names = run("ip", "netns", "list", check=False).split()
    return [name for name in names if name.startswith(PREFIX)]


@dataclass(frozen=True)
class Home:
    """A home network: a router namespace with its own NAT, one volunteer host behind it."""

    index: int  # 1 .. MAX_HOMES
    nat: NatKind = "port-restricted"

    def __post_init__(self) -> None:
        if not 1 <= self.index <= MAX_HOMES:
            raise LabError(f"home numbers run from 1 to {MAX_HOMES}, not {self.index}")
        if self.nat not in NAT_KINDS:
            raise LabError(f"NAT kind must be one of {', '.join(NAT_KINDS)}, not {self.nat!r}")

    @property
    def router(self) -> str:
        return f"{PREFIX}home{self.index}"

    @property
    def host(self) -> str:
        return f"{PREFIX}vol{self.index}"

    @property
    def wan_ip(self) -> str:
        return f"203.0.113.{100 + self.index}"

    @property
    def lan_net(self) -> str:
        base = ipaddress.IPv4Network(HOMES_NET).network_address + 16 * (self.index - 1)
        return f"{base}/28"

    @property
    def router_lan_ip(self) -> str:
        return str(ipaddress.IPv4Network(self.lan_net).network_address + 1)

    @property
    def host_ip(self) -> str:
        return str(ipaddress.IPv4Network(self.lan_net).network_address + 2)


def parse_nat_kind(text: str) -> NatKind:
    """One of the kinds the lab can build (a subset of `unwall.wire.nat`'s vocabulary)."""
    for kind in NAT_KINDS:
        if text == kind:
            return kind
    raise LabError(f"the lab builds NATs of kind {', '.join(NAT_KINDS)}, not {text!r}")


def build(
    addresses: LabAddresses, homes: tuple[Home, ...] = (), client_nat: NatKind = "port-restricted"
) -> None:
    """Create the namespaces, links, addresses, routes and NATs."""
    reason = lab_possible()
    if reason is not None:
        raise LabError(reason)
    teardown()
    try:
        for name in NAMESPACES:
            run("ip", "netns", "add", name)
            run("ip", "link", "set", "lo", "up", namespace=name)
        # The internet is one switch: the box, the services and every home's router on it.
        run("ip", "link", "add", "br0", "type", "bridge", namespace=INTERNET)
        run("ip", "link", "set", "br0", "up", namespace=INTERNET)
        _link(CENSORED, "c0", BOX, "b0")
        _link(BOX, "b1", INTERNET, "i0")
        run("ip", "link", "set", "i0", "master", "br0", namespace=INTERNET)
        run("ip", "addr", "add", f"{CENSORED_IP}/25", "dev", "c0", namespace=CENSORED)
        run("ip", "route", "add", "default", "via", BOX_INSIDE_IP, namespace=CENSORED)
        run("ip", "addr", "add", f"{BOX_INSIDE_IP}/25", "dev", "b0", namespace=BOX)
        run("ip", "addr", "add", f"{BOX_OUTSIDE_IP}/24", "dev", "b1", namespace=BOX)
        run("ip", "route", "add", "default", "via", INTERNET_IP, namespace=BOX)
        run("ip", "addr", "add", f"{INTERNET_IP}/24", "dev", "br0", namespace=INTERNET)
        for address in addresses.all():
            run("ip", "addr", "add", f"{address}/32", "dev", "br0", namespace=INTERNET)
        # The internet routes the networks that have no NAT (kind "none") to their routers.
        _forwarding(INTERNET)
        _forwarding(BOX)
        # Per-flow byte and packet counts, and start/stop times, in conntrack events.
        run("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1", namespace=BOX, check=False)
        run("sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=1", namespace=BOX, check=False)
        _nat_chains(BOX, "b1", CENSORED_NET)
        set_nat(BOX, client_nat, "b1", CENSORED_NET, CENSORED_IP, BOX_OUTSIDE_IP)
        _resolvers(addresses, NAMESPACES)
        for home in homes:
            build_home(addresses, home)
    except BaseException:
        teardown()
        raise


def build_home(addresses: LabAddresses, home: Home) -> None:
    for name in (home.router, home.host):
        run("ip", "netns", "add", name)
        run("ip", "link", "set", "lo", "up", namespace=name)
    _link(home.router, "wan", INTERNET, f"h{home.index}")
    run("ip", "link", "set", f"h{home.index}", "master", "br0", namespace=INTERNET)
    _link(home.host, "eth0", home.router, "lan")
    run("ip", "addr", "add", f"{home.wan_ip}/24", "dev", "wan", namespace=home.router)
    run("ip", "route", "add", "default", "via", INTERNET_IP, namespace=home.router)
    run("ip", "addr", "add", f"{home.router_lan_ip}/28", "dev", "lan", namespace=home.router)
    run("ip", "addr", "add", f"{home.host_ip}/28", "dev", "eth0", namespace=home.host)
    run("ip", "route", "add", "default", "via", home.router_lan_ip, namespace=home.host)
    _forwarding(home.router)
    _nat_chains(home.router, "wan", home.lan_net)
    set_nat(home.router, home.nat, "wan", home.lan_net, home.host_ip, home.wan_ip)
    _resolvers(addresses, (home.router, home.host))


def _forwarding(namespace: str) -> None:
    run("sysctl", "-qw", "net.ipv4.ip_forward=1", namespace=namespace)
    # A router on the shared switch must not tell hosts to skip it (ICMP redirects).
    run("sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0", namespace=namespace)


def _resolvers(addresses: LabAddresses, namespaces: tuple[str, ...]) -> None:
    for name in namespaces:
        etc = NETNS_ETC / name
        etc.mkdir(parents=True, exist_ok=True)
        resolver = addresses.dns if name != BOX else "127.0.0.1"
        (etc / "resolv.conf").write_text(f"nameserver {resolver}\n")
        (etc / "hosts").write_text("127.0.0.1 localhost\n")


SNAT_CHAIN, DNAT_CHAIN = "UWLAB-SNAT", "UWLAB-DNAT"


def _nat_chains(namespace: str, wan: str, inside_net: str) -> None:
    """The router's NAT lives in two chains of its own, so its kind can change later."""
    for chain in (SNAT_CHAIN, DNAT_CHAIN):
        run("iptables", "-t", "nat", "-N", chain, namespace=namespace)
    run("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", wan, "-s", inside_net,
        "-j", SNAT_CHAIN, namespace=namespace)  # fmt: skip
    run("iptables", "-t", "nat", "-A", "PREROUTING", "-i", wan, "-j", DNAT_CHAIN,
        namespace=namespace)  # fmt: skip
    # Unsolicited UDP to the router itself is dropped before conntrack confirms an entry
    # for it. Otherwise that entry (peer:p -> router:q) would hold the very tuple that the
    # inside host's own mapping to that peer needs, and Linux would then map the host to a
    # new port: a hole punch that arrives first would turn an endpoint-independent NAT
    # into a symmetric one. Home routers drop such packets without reserving anything.
    run("iptables", "-A", "INPUT", "-i", wan, "-p", "udp", "-m", "conntrack",
        "--ctstate", "NEW", "-j", "DROP", namespace=namespace)  # fmt: skip


def nat_commands(kind: NatKind, inside_host: str) -> list[list[str]]:
    """iptables commands that make a router's NAT chains of this kind."""
    commands = [["iptables", "-t", "nat", "-F", chain] for chain in (SNAT_CHAIN, DNAT_CHAIN)]
    if kind == "none":
        return commands
    masquerade = ["iptables", "-t", "nat", "-A", SNAT_CHAIN, "-j", "MASQUERADE"]
    if kind == "symmetric":
        masquerade.append("--random-fully")
    commands.append(masquerade)
    if kind == "full-cone":
        commands.append(["iptables", "-t", "nat", "-A", DNAT_CHAIN, "-p", "udp",
                         "-j", "DNAT", "--to-destination", inside_host])  # fmt: skip
    return commands


def set_nat(
    namespace: str, kind: NatKind, wan: str, inside_net: str, inside_host: str, wan_ip: str
) -> None:
    """Make (or remake) a router's NAT of this kind; existing mappings are forgotten."""
    for command in nat_commands(kind, inside_host):
        run(*command, namespace=namespace)
    if kind == "none":  # a public network: the internet routes it to this router
        run("ip", "route", "replace", inside_net, "via", wan_ip, namespace=INTERNET)
    else:
        run("ip", "route", "del", inside_net, namespace=INTERNET, check=False)
    run("conntrack", "-F", namespace=namespace, check=False)


def set_client_nat(kind: NatKind) -> None:
    """Change the NAT the box puts in front of the censored network."""
    set_nat(BOX, kind, "b1", CENSORED_NET, CENSORED_IP, BOX_OUTSIDE_IP)


def real_sized_packets(namespace: str, device: str) -> None:
    """No segmentation or receive offloads on `device`: every packet on it is at most one
    MTU (1500), as on a real path, so the link emulator's loss and rate act per packet and
    the box inspects the packets a wire would carry, not 64 KiB aggregates."""
    run("ethtool", "-K", device, "gso", "off", "tso", "off", "gro", "off", namespace=namespace)


def _link(left: str, left_if: str, right: str, right_if: str) -> None:
    temp_left, temp_right = f"uwl{os.getpid() % 10000}a", f"uwl{os.getpid() % 10000}b"
    run("ip", "link", "add", temp_left, "type", "veth", "peer", "name", temp_right)
    run("ip", "link", "set", temp_left, "netns", left)
    run("ip", "link", "set", temp_right, "netns", right)
    run("ip", "link", "set", temp_left, "name", left_if, namespace=left)
    run("ip", "link", "set", temp_right, "name", right_if, namespace=right)
    run("ip", "link", "set", left_if, "up", namespace=left)
    run("ip", "link", "set", right_if, "up", namespace=right)
    real_sized_packets(left, left_if)
    real_sized_packets(right, right_if)


def pids_in(namespace: str) -> list[int]:
    out = run("ip", "netns", "pids", namespace, check=False)
    return [int(pid) for pid in out.split() if pid.isdigit()]


def teardown() -> None:
    """Remove every lab namespace (and with them their links); idempotent."""
    for name in namespaces_up():
        for pid in pids_in(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)  # processes the lab started in its own namespaces
        run("ip", "netns", "del", name, check=False)
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
