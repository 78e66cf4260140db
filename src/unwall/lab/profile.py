"""A censor profile: what the box blocks and how, as data (TOML), not code.

```toml
[dns]
poison = ["news.test"]          # forged answers for these names (and their subdomains)
answer = "203.0.113.99"         # the address the forged answers point to

[ip]
block = ["203.0.113.80/32"]     # dropped, whatever the port

[sni]                           # TLS ClientHello and QUIC Initial server names
block = ["news.test"]
action = "rst"                  # "rst" (TCP reset) or "drop" (silent)

[host]                          # HTTP Host header
block = ["news.test"]
action = "rst"

[residual]
seconds = 0                     # after a hit, drop the same client/server/port for N s

[throttle]
ip = ["203.0.113.81/32"]        # traffic with these networks is shaped (tc htb) ...
rate = "1mbit"                  # ... to this rate, each direction

[webrtc]                        # WebRTC fingerprints (see unwall.lab.analyzers.dtls, .stun)
allow = "browsers"              # allow-list: a WebRTC flow whose fingerprints are not all a
                                # browser's is blocked ("browsers": the captured reference in
                                # unwall/lab/references/browser-webrtc.toml; or a table of
                                # key = [patterns], as below)
block = { ja3 = ["66d279042bef80ae8e6369c52a7249b7"] }   # these fingerprints, whatever else
action = "drop"                 # "drop", or "flag": let it through, report it as suspected
# keys: ja3 ja4 ja3s ja4s dtls-version server-cert client-cert ice-check ice-priority srtp;
# patterns are
# shell-style (* matches anything)

[hosts]                         # the host-level view: each censored host across its flows
repeat_ja3 = false              # true: a host whose last `after` WebRTC DTLS ClientHellos all
after = 4                       # had one JA3 string is suspected (Chromium permutes its
action = "flag"                 # extensions on every connection; a stack that does not
                                # repeats itself); "drop" (that flow), or "flag" (report only)

[stun]                          # STUN no browser sends
change_request = false          # true: a binding request with RFC 5780's CHANGE-REQUEST (a
action = "flag"                 # NAT-behaviour check) is suspected; "drop" (that flow), or
                                # "flag" (report only)

[tls]                           # TLS over TCP no browser sends (unwall.lab.analyzers.tls)
allow = "browsers"              # JA4 allow-list: "browsers" (references/browser-tls.toml,
                                # captured from the lab's Chromium), or a list of patterns;
                                # absent: the rule is off
names = ["*"]                   # the server names (SNI, shell-style) it watches; "*": every
                                # TLS flow, with a name or without
action = "flag"                 # "drop" (that flow), or "flag" (report only)

[datachannel]                   # "calls" that carry no call (see unwall.lab.analyzers.carrier)
block = false                   # true: a WebRTC flow that, after its DTLS handshake, carried
after_bytes = 65536             # more than this many bytes of DTLS application data (a data
action = "drop"                 # channel's SCTP) and no SRTP; "drop", or "flag" (report only)

[fet]                           # fully encrypted traffic (the GFW's rule of 2021-2023;
block = false                   # see unwall.lab.analyzers.fet): true judges the first TCP
action = "drop"                 # payload of every flow; "drop", or "flag" (report only)

[udp]
block = false                   # true: no UDP leaves the censored network (only TCP does;
                                # DNS to the box's own resolver still works)

[link]                          # the long path between the censored network and the world
preset = "censored-lossy"       # clean, intercontinental, censored-lossy, hostile; or:
delay_ms = 100                  # one way, each direction (RTT = up + down)
jitter_ms = 15                  # the delay wanders within +-15 ms (packets stay in order)
loss = 0.05                     # mean random loss ...
burst = 3                       # ... in bursts of 3 packets on average (Gilbert-Elliott)
rate = "20mbit"                 # bottleneck, each direction ...
queue_ms = 100                  # ... with a tail-drop buffer of 100 ms at that rate
seed = 1                        # optional: the same losses for the same packets
[link.up]                       # optional overrides for one direction (censored -> world)
loss = 0.02
```
See `unwall.lab.link` for the model and its presets.

Profiles that ship with the lab are in `SHIPPED_PROFILES` (src/unwall/lab/profiles/):
`browser-calls-only.toml` is the strictest for WebRTC (only a browser's, only calls).
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from unwall.lab.link import LinkError, LinkSpec, link_from_dict, parse_rate

#: the profiles that ship with the lab, one TOML file each
SHIPPED_PROFILES = Path(__file__).resolve().parent / "profiles"
ACTIONS = ("rst", "drop")
WEBRTC_ACTIONS = ("drop", "flag")
#: the fingerprints the box's DTLS and STUN analyzers give a WebRTC flow
FINGERPRINT_KEYS = (
    "ja3", "ja4", "ja3s", "ja4s", "dtls-version", "server-cert", "client-cert", "ice-check",
    "ice-priority", "srtp",
)  # fmt: skip
WEBRTC_ANALYZERS = ("dtls", "stun")
REFERENCES = ("browsers",)
_KEYS = {
    "dns": {"poison", "answer"},
    "ip": {"block"},
    "sni": {"block", "action"},
    "host": {"block", "action"},
    "residual": {"seconds"},
    "throttle": {"ip", "rate"},
    "udp": {"block"},
    "webrtc": {"allow", "block", "action"},
    "fet": {"block", "action"},
    "datachannel": {"block", "after_bytes", "action"},
    "hosts": {"repeat_ja3", "after", "action"},
    "stun": {"change_request", "action"},
    "tls": {"allow", "names", "action"},
}

Patterns = tuple[tuple[str, tuple[str, ...]], ...]


def browser_reference() -> dict[str, tuple[str, ...]]:
    """The fingerprints of browsers' WebRTC captured in the lab, every browser's together."""
    text = resources.files("unwall.lab").joinpath("references/browser-webrtc.toml").read_text()
    merged: dict[str, tuple[str, ...]] = {}
    for browser in tomllib.loads(text).values():
        for key, values in browser.items():
            merged[key] = tuple(dict.fromkeys(merged.get(key, ()) + tuple(values)))
    return merged


def browser_tls_reference() -> tuple[str, ...]:
    """The JA4s of browsers' TLS captured here, every browser's together."""
    text = resources.files("unwall.lab").joinpath("references/browser-tls.toml").read_text()
    return tuple(ja4 for browser in tomllib.loads(text).values() for ja4 in browser["ja4"])


@dataclass(frozen=True)
class TlsRule:
    """`[tls]`: TLS whose JA4 is not on the allow-list, to the names watched, is suspected."""

    allow: tuple[str, ...] = ()  # JA4 patterns; empty: the rule is off
    names: tuple[str, ...] = ("*",)
    action: str = "flag"

    @property
    def active(self) -> bool:
        return bool(self.allow)

    def objection(self, ja4: str, server_name: str | None) -> str | None:
        """Why a ClientHello with this JA4 to this name (None: no SNI) is suspected."""
        name = server_name or ""
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.names):
            return None
        if any(fnmatch.fnmatchcase(ja4, pattern) for pattern in self.allow):
            return None
        return f"tls ja4 {ja4} to {server_name or 'no name'}: not a browser's"


def _tls_rule(table: dict[str, Any]) -> TlsRule:
    allow = table.get("allow", ())
    if allow == "browsers":
        allow = browser_tls_reference()
    names, action = table.get("names", ["*"]), table.get("action", "flag")
    for key, value in (("allow", allow), ("names", names)):
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            other = ' or "browsers"' if key == "allow" else ""
            raise ProfileError(f"[tls] {key} must be a list of patterns{other}")
    if action not in WEBRTC_ACTIONS:
        raise ProfileError(f"[tls] action must be one of {WEBRTC_ACTIONS}, not {action!r}")
    return TlsRule(tuple(allow), tuple(names), action)


def _patterns(value: Any, where: str) -> Patterns:
    if value == "browsers":
        value = browser_reference()
    if not isinstance(value, dict):
        raise ProfileError(f'{where} must be "browsers" or a table of key = [patterns]')
    unknown = set(value) - set(FINGERPRINT_KEYS)
    if unknown:
        raise ProfileError(f"unknown fingerprint(s) {sorted(unknown)} in {where}; "
                           f"known: {', '.join(FINGERPRINT_KEYS)}")  # fmt: skip
    patterns = []
    for key, values in value.items():
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
            raise ProfileError(f"{where}.{key} must be a list of patterns")
        patterns.append((key, tuple(values)))
    return tuple(patterns)


def _matches(value: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


@dataclass(frozen=True)
class WebRtcRules:
    """What the box does with WebRTC by its fingerprints: block some, or allow only some."""

    allow: Patterns = ()
    block: Patterns = ()
    action: str = "drop"

    @property
    def active(self) -> bool:
        return bool(self.allow or self.block)

    def objection(self, key: str, value: str) -> str | None:
        """Why one fingerprint of a WebRTC flow is objectionable, or None."""
        blocked = dict(self.block).get(key)
        if blocked is not None and _matches(value, blocked):
            return f"webrtc {key} {value} is on the block list"
        allowed = dict(self.allow)
        if allowed and key in allowed and not _matches(value, allowed[key]):
            return f"webrtc {key} {value} is not a browser's"
        return None


#: the default of `[datachannel] after_bytes`: a page of chat is less, a tunnel soon more
DATACHANNEL_AFTER_BYTES = 64 * 1024


@dataclass(frozen=True)
class DataChannelRule:
    """A WebRTC flow that carries a data channel and no media is not a call: once it has
    carried more than `after_bytes` of DTLS application data with no SRTP, it is suspected.
    A single SRTP or SRTCP packet clears it (a call may have a data channel too)."""

    block: bool = False
    after_bytes: int = DATACHANNEL_AFTER_BYTES
    action: str = "drop"

    @property
    def active(self) -> bool:
        return self.block

    def decided(self, datachannel_bytes: int, media_packets: int) -> bool:
        """Whether the rule can say anything more about a flow with these counts."""
        return media_packets > 0 or datachannel_bytes > self.after_bytes

    def objection(self, datachannel_bytes: int, media_packets: int) -> str | None:
        """Why a flow with these counts is suspected, or None."""
        if media_packets or datachannel_bytes <= self.after_bytes:
            return None
        return (
            f"carrier datachannel-only {datachannel_bytes} bytes of DTLS application data "
            f"and no SRTP (more than {self.after_bytes})"
        )


#: the default of `[hosts] after`: a browser's JA3 strings agree by chance this rarely
#: (Chromium permutes about 16 extensions: two connections agree once in ~10^13)
HOSTS_AFTER = 4


@dataclass(frozen=True)
class HostRule:
    """The host-level view of WebRTC: a host whose last `after` DTLS ClientHellos (on
    WebRTC flows, sent by the host) all had one JA3 string repeats one handshake, which a
    browser that permutes its extensions does not; it is suspected."""

    repeat_ja3: bool = False
    after: int = HOSTS_AFTER
    action: str = "flag"

    @property
    def active(self) -> bool:
        return self.repeat_ja3

    def objection(self, host: str, recent: list[str]) -> str | None:
        """Why a host whose recent ClientHellos' JA3 strings (newest last) these are is
        suspected, or None."""
        if not self.repeat_ja3 or len(recent) < self.after:
            return None
        last = recent[-self.after :]
        if any(ja3 != last[0] for ja3 in last):
            return None
        digest = hashlib.md5(last[0].encode(), usedforsecurity=False).hexdigest()
        return f"hosts {host} repeated one DTLS JA3 ({digest}) in its last {self.after} handshakes"


class ProfileError(ValueError):
    pass


def _host_rule(table: dict[str, Any]) -> HostRule:
    repeat = table.get("repeat_ja3", False)
    after = table.get("after", HOSTS_AFTER)
    action = table.get("action", "flag")
    if not isinstance(repeat, bool):
        raise ProfileError("[hosts] repeat_ja3 must be true or false")
    if isinstance(after, bool) or not isinstance(after, int) or not 2 <= after <= 64:
        raise ProfileError("[hosts] after must be a whole number of handshakes from 2 to 64")
    if action not in WEBRTC_ACTIONS:
        raise ProfileError(f"[hosts] action must be one of {WEBRTC_ACTIONS}, not {action!r}")
    return HostRule(repeat_ja3=repeat, after=after, action=action)


def _datachannel_rule(table: dict[str, Any]) -> DataChannelRule:
    block = table.get("block", False)
    after = table.get("after_bytes", DATACHANNEL_AFTER_BYTES)
    action = table.get("action", "drop")
    if not isinstance(block, bool):
        raise ProfileError("[datachannel] block must be true or false")
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ProfileError("[datachannel] after_bytes must be a whole number of bytes >= 0")
    if action not in WEBRTC_ACTIONS:
        raise ProfileError(f"[datachannel] action must be one of {WEBRTC_ACTIONS}, not {action!r}")
    return DataChannelRule(block=block, after_bytes=after, action=action)


def _names(values: Any, where: str) -> tuple[str, ...]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ProfileError(f"{where} must be a list of names")
    return tuple(value.lower().rstrip(".") for value in values)


def name_matches(name: str, blocked: tuple[str, ...]) -> str | None:
    """The blocked entry that `name` is, or is a subdomain of."""
    name = name.lower().rstrip(".")
    for entry in blocked:
        if name == entry or name.endswith("." + entry):
            return entry
    return None


@dataclass(frozen=True)
class CensorProfile:
    dns_poison: tuple[str, ...] = ()
    dns_answer: str = "203.0.113.99"
    ip_block: tuple[ipaddress.IPv4Network, ...] = ()
    sni_block: tuple[str, ...] = ()
    sni_action: str = "rst"
    host_block: tuple[str, ...] = ()
    host_action: str = "rst"
    residual_seconds: int = 0
    throttle_ip: tuple[ipaddress.IPv4Network, ...] = ()
    throttle_rate: str = "1mbit"
    udp_block: bool = False
    webrtc: WebRtcRules = field(default_factory=WebRtcRules)
    fet_block: bool = False
    fet_action: str = "drop"
    datachannel: DataChannelRule = field(default_factory=DataChannelRule)
    hosts: HostRule = field(default_factory=HostRule)
    #: `[stun]`: suspect a binding request with CHANGE-REQUEST (no browser sends one)
    stun_change_request: bool = False
    stun_action: str = "flag"
    tls: TlsRule = field(default_factory=TlsRule)
    link: LinkSpec = field(default_factory=LinkSpec)
    source: str = field(default="built-in", compare=False)

    @classmethod
    def load(cls, path: Path) -> CensorProfile:
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ProfileError(f"profile {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"profile {path} is not valid TOML: {exc}") from None
        return cls.from_dict(document, source=str(path))

    @classmethod
    def from_dict(cls, document: dict[str, Any], source: str = "dict") -> CensorProfile:
        known = {*_KEYS, "link"}
        unknown = set(document) - known
        if unknown:
            raise ProfileError(f"unknown table(s) {sorted(unknown)}; known: {sorted(known)}")
        tables: dict[str, dict[str, Any]] = {}
        for table, keys in _KEYS.items():
            section = document.get(table, {})
            if not isinstance(section, dict):
                raise ProfileError(f"[{table}] must be a table")
            unknown_keys = set(section) - keys
            if unknown_keys:
                raise ProfileError(
                    f"unknown key(s) {sorted(unknown_keys)} in [{table}]; known: {sorted(keys)}"
                )
            tables[table] = section
        dns, ip, sni, host = tables["dns"], tables["ip"], tables["sni"], tables["host"]
        residual, throttle = tables["residual"], tables["throttle"]
        rate = throttle.get("rate", "1mbit")
        try:
            parse_rate(rate)
        except LinkError:
            message = f"[throttle] rate {rate!r} must look like 500kbit or 2mbit"
            raise ProfileError(message) from None
        try:
            throttled = tuple(
                ipaddress.IPv4Network(v, strict=False) for v in throttle.get("ip", [])
            )
            networks = tuple(ipaddress.IPv4Network(v, strict=False) for v in ip.get("block", []))
            ipaddress.IPv4Address(dns.get("answer", "203.0.113.99"))
        except ValueError as exc:
            raise ProfileError(f"bad address in profile: {exc}") from None
        for table, action in (
            ("sni", sni.get("action", "rst")),
            ("host", host.get("action", "rst")),
        ):
            if action not in ACTIONS:
                raise ProfileError(f"[{table}] action must be one of {ACTIONS}, not {action!r}")
        seconds = residual.get("seconds", 0)
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
            raise ProfileError("[residual] seconds must be a whole number >= 0")
        udp_block = tables["udp"].get("block", False)
        if not isinstance(udp_block, bool):
            raise ProfileError("[udp] block must be true or false")
        webrtc = tables["webrtc"]
        action = webrtc.get("action", "drop")
        if action not in WEBRTC_ACTIONS:
            raise ProfileError(f"[webrtc] action must be one of {WEBRTC_ACTIONS}, not {action!r}")
        rules = WebRtcRules(
            allow=_patterns(webrtc["allow"], "[webrtc] allow") if "allow" in webrtc else (),
            block=_patterns(webrtc["block"], "[webrtc] block") if "block" in webrtc else (),
            action=action,
        )
        fet = tables["fet"]
        fet_block, fet_action = fet.get("block", False), fet.get("action", "drop")
        if not isinstance(fet_block, bool):
            raise ProfileError("[fet] block must be true or false")
        if fet_action not in WEBRTC_ACTIONS:
            raise ProfileError(f"[fet] action must be one of {WEBRTC_ACTIONS}, not {fet_action!r}")
        datachannel = _datachannel_rule(tables["datachannel"])
        hosts = _host_rule(tables["hosts"])
        stun = tables["stun"]
        change_request, stun_action = stun.get("change_request", False), stun.get("action", "flag")
        if not isinstance(change_request, bool):
            raise ProfileError("[stun] change_request must be true or false")
        if stun_action not in WEBRTC_ACTIONS:
            raise ProfileError(
                f"[stun] action must be one of {WEBRTC_ACTIONS}, not {stun_action!r}"
            )
        try:
            link = link_from_dict(document["link"]) if "link" in document else LinkSpec()
        except LinkError as exc:
            raise ProfileError(str(exc)) from None
        return cls(
            dns_poison=_names(dns.get("poison", []), "[dns] poison"),
            dns_answer=dns.get("answer", "203.0.113.99"),
            ip_block=networks,
            sni_block=_names(sni.get("block", []), "[sni] block"),
            sni_action=sni.get("action", "rst"),
            host_block=_names(host.get("block", []), "[host] block"),
            host_action=host.get("action", "rst"),
            residual_seconds=seconds,
            throttle_ip=throttled,
            throttle_rate=rate,
            udp_block=udp_block,
            webrtc=rules,
            fet_block=fet_block,
            fet_action=fet_action,
            datachannel=datachannel,
            hosts=hosts,
            stun_change_request=change_request,
            stun_action=stun_action,
            tls=_tls_rule(tables["tls"]),
            link=link,
            source=source,
        )

    def ip_blocked(self, address: str) -> ipaddress.IPv4Network | None:
        ip = ipaddress.IPv4Address(address)
        return next((net for net in self.ip_block if ip in net), None)

    @property
    def blocked_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.dns_poison + self.sni_block + self.host_block))
