"""NAT kinds: the one vocabulary client, volunteer and broker use (docs/protocol.md 1).

A peer learns its kind with RFC 5780 NAT behaviour discovery (`unwall.transport.natcheck`)
and reports it to the broker, which pairs it only with peers it can reach. The names are
the classic "cone" names, each defined by RFC 4787's mapping and filtering behaviour:

| kind              | mapping                     | filtering                       |
|-------------------|-----------------------------|---------------------------------|
| `none`            | no NAT: mapped == local     | (none worth the name)           |
| `full-cone`       | endpoint-independent        | endpoint-independent            |
| `restricted`      | endpoint-independent        | address-dependent               |
| `port-restricted` | endpoint-independent        | address-and-port-dependent      |
| `symmetric`       | not endpoint-independent    | (any)                           |
| `unknown`         | not measured: no STUN server, no answer, or no RFC 5780 support |
"""

from __future__ import annotations

from typing import Final, Literal

NatKind = Literal["none", "full-cone", "restricted", "port-restricted", "symmetric", "unknown"]
NAT_KINDS: Final[tuple[NatKind, ...]] = (
    "none",
    "full-cone",
    "restricted",
    "port-restricted",
    "symmetric",
    "unknown",
)

#: Kinds that let anyone who knows the mapped address in (endpoint-independent filtering).
OPEN_KINDS: Final[frozenset[NatKind]] = frozenset({"none", "full-cone"})

#: How hard a kind is to reach, for preferring the volunteers that fewer clients can use.
#: Higher is more restrictive. `unknown` (which `can_connect` treats as open) ranks just
#: above the known-open kinds: those are the surest for the clients that need them.
RESTRICTIVENESS: Final[dict[NatKind, int]] = {
    "none": 0,
    "full-cone": 0,
    "unknown": 1,
    "restricted": 2,
    "port-restricted": 3,
    "symmetric": 4,
}

#: What the kinds mean, in words for a log line.
DESCRIPTIONS: Final[dict[NatKind, str]] = {
    "none": "no NAT (the address seen outside is this machine's own)",
    "full-cone": "full-cone NAT (anyone can reach the mapped address)",
    "restricted": "address-restricted NAT",
    "port-restricted": "port-restricted NAT",
    "symmetric": "symmetric NAT (a new mapping for every destination)",
    "unknown": "unknown",
}


def parse_nat_kind(text: str) -> NatKind:
    """The kind named ``text``; ValueError for anything else."""
    for kind in NAT_KINDS:
        if text == kind:
            return kind
    raise ValueError(f"NAT kind must be one of {', '.join(NAT_KINDS)}, not {text[:32]!r}")


def can_connect(a: NatKind, b: NatKind) -> bool:
    """Whether peers behind NATs of kinds ``a`` and ``b`` can connect directly (UDP, ICE).

    ICE punches a hole from both sides at once: the pair works unless each side's NAT drops
    what the other sends. A side with endpoint-independent filtering (`none`, `full-cone`)
    accepts anything sent to its mapped address, so it can pair with anyone. A symmetric
    NAT sends from a port the other side never learned: a port-restricted or symmetric peer
    drops those packets, while an address-restricted peer, which has sent to that address,
    accepts them. Two endpoint-independent mappings always meet.

    `unknown` is treated optimistically, as able to connect to anything: a peer that could
    not measure its NAT (no STUN server, or one without RFC 5780) is usually a browser or an
    operator's own machine, and refusing it would strand the many that connect fine. A
    failure then shows up as a WebRTC failure the client reports and retries.
    """
    if a == "unknown" or b == "unknown":
        return True
    if a in OPEN_KINDS or b in OPEN_KINDS:
        return True
    if a == "symmetric" or b == "symmetric":
        other = b if a == "symmetric" else a
        return other == "restricted"
    return True


__all__ = [
    "DESCRIPTIONS",
    "NAT_KINDS",
    "OPEN_KINDS",
    "RESTRICTIVENESS",
    "NatKind",
    "can_connect",
    "parse_nat_kind",
]
