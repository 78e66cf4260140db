"""NAT kinds: which pairs can connect directly, and the names on the wire."""

from __future__ import annotations

import itertools

import pytest

from unwall.wire.nat import NAT_KINDS, RESTRICTIVENESS, NatKind, can_connect, parse_nat_kind

# The whole table, row by row (symmetric in its two arguments, checked below).
Y, N = True, False
TABLE: dict[NatKind, dict[NatKind, bool]] = {
    #                  none  full-cone  restricted  port-restr.  symmetric  unknown
    "none": dict(zip(NAT_KINDS, (Y, Y, Y, Y, Y, Y), strict=True)),
    "full-cone": dict(zip(NAT_KINDS, (Y, Y, Y, Y, Y, Y), strict=True)),
    "restricted": dict(zip(NAT_KINDS, (Y, Y, Y, Y, Y, Y), strict=True)),
    "port-restricted": dict(zip(NAT_KINDS, (Y, Y, Y, Y, N, Y), strict=True)),
    "symmetric": dict(zip(NAT_KINDS, (Y, Y, Y, N, N, Y), strict=True)),
    "unknown": dict(zip(NAT_KINDS, (Y, Y, Y, Y, Y, Y), strict=True)),
}


@pytest.mark.parametrize(("a", "b"), list(itertools.product(NAT_KINDS, NAT_KINDS)))
def test_can_connect_table(a: NatKind, b: NatKind) -> None:
    assert can_connect(a, b) is TABLE[a][b]
    assert can_connect(a, b) is can_connect(b, a)


def test_the_three_pairs_that_cannot_meet() -> None:
    bad = {(a, b) for a, b in itertools.product(NAT_KINDS, NAT_KINDS) if not can_connect(a, b)}
    assert bad == {
        ("symmetric", "symmetric"),
        ("symmetric", "port-restricted"),
        ("port-restricted", "symmetric"),
    }


@pytest.mark.parametrize("kind", NAT_KINDS)
def test_parse_round_trip(kind: NatKind) -> None:
    assert parse_nat_kind(kind) == kind
    assert kind in RESTRICTIVENESS


@pytest.mark.parametrize("text", ["", "Symmetric", "cone", "full cone", "x" * 100])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="NAT kind must be one of"):
        parse_nat_kind(text)
