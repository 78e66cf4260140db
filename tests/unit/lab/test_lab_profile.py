"""Censor profiles: TOML and dicts in, a validated `CensorProfile` out; name and address
matching as the box applies it."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from unwall.lab.profile import SHIPPED_PROFILES, CensorProfile, ProfileError, name_matches

FULL_TOML = """
[dns]
poison = ["News.Test.", "video.test"]
answer = "203.0.113.99"

[ip]
block = ["203.0.113.80/32", "192.0.2.0/24", "198.18.0.7/16"]

[sni]
block = ["news.test", "CDN.test"]
action = "drop"

[host]
block = ["news.test", "forum.test."]
action = "rst"

[residual]
seconds = 30
"""


# -- loading ------------------------------------------------------------------------------


def test_load_full_profile(tmp_path: Path) -> None:
    path = tmp_path / "profile.toml"
    path.write_text(FULL_TOML, encoding="utf-8")
    profile = CensorProfile.load(path)
    assert profile.dns_poison == ("news.test", "video.test")
    assert profile.dns_answer == "203.0.113.99"
    assert profile.ip_block == (
        ipaddress.IPv4Network("203.0.113.80/32"),
        ipaddress.IPv4Network("192.0.2.0/24"),
        ipaddress.IPv4Network("198.18.0.0/16"),  # host bits are tolerated (strict=False)
    )
    assert profile.sni_block == ("news.test", "cdn.test")
    assert profile.sni_action == "drop"
    assert profile.host_block == ("news.test", "forum.test")
    assert profile.host_action == "rst"
    assert profile.residual_seconds == 30
    assert profile.source == str(path)


def test_empty_profile_is_the_default() -> None:
    profile = CensorProfile.from_dict({})
    assert profile == CensorProfile()
    assert profile.dns_poison == profile.sni_block == profile.host_block == ()
    assert profile.ip_block == ()
    assert (profile.sni_action, profile.host_action) == ("rst", "rst")
    assert profile.dns_answer == "203.0.113.99"
    assert profile.residual_seconds == 0
    assert profile.source == "dict"


def test_source_does_not_take_part_in_equality() -> None:
    document = {"sni": {"block": ["news.test"]}}
    assert CensorProfile.from_dict(document, source="a") == CensorProfile.from_dict(
        document, source="b"
    )


# (id, document, what the profile's field holds)
NORMALISED: list[tuple[str, dict[str, Any], str, object]] = [
    ("dns-lower", {"dns": {"poison": ["NEWS.Test"]}}, "dns_poison", ("news.test",)),
    ("dns-trailing-dot", {"dns": {"poison": ["news.test."]}}, "dns_poison", ("news.test",)),
    ("sni-both", {"sni": {"block": ["News.TEST."]}}, "sni_block", ("news.test",)),
    ("host-both", {"host": {"block": ["A.News.Test."]}}, "host_block", ("a.news.test",)),
    ("keeps-order", {"sni": {"block": ["b.test", "a.test"]}}, "sni_block", ("b.test", "a.test")),
    ("empty-list", {"sni": {"block": []}}, "sni_block", ()),
    ("sni-drop", {"sni": {"action": "drop"}}, "sni_action", "drop"),
    ("host-drop", {"host": {"action": "drop"}}, "host_action", "drop"),
    ("residual-zero", {"residual": {"seconds": 0}}, "residual_seconds", 0),
    ("residual-set", {"residual": {"seconds": 5}}, "residual_seconds", 5),
    ("answer", {"dns": {"answer": "192.0.2.1"}}, "dns_answer", "192.0.2.1"),
    (
        "ip-host-bits",
        {"ip": {"block": ["203.0.113.80/24"]}},
        "ip_block",
        (ipaddress.IPv4Network("203.0.113.0/24"),),
    ),
    (
        "ip-bare-address",
        {"ip": {"block": ["203.0.113.80"]}},
        "ip_block",
        (ipaddress.IPv4Network("203.0.113.80/32"),),
    ),
]


@pytest.mark.parametrize(
    ("document", "attribute", "expected"),
    [case[1:] for case in NORMALISED],
    ids=[case[0] for case in NORMALISED],
)
def test_from_dict_fields(document: dict[str, Any], attribute: str, expected: object) -> None:
    assert getattr(CensorProfile.from_dict(document), attribute) == expected


# (id, document, a fragment of the error message)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-table", {"dnss": {"poison": ["news.test"]}}, "unknown table"),
    ("unknown-tables", {"ssl": {}, "sni": {}, "quic": {}}, "['quic', 'ssl']"),
    ("sni-action", {"sni": {"action": "reset"}}, "[sni] action"),
    ("host-action", {"host": {"action": "block"}}, "[host] action"),
    ("action-case", {"sni": {"action": "RST"}}, "[sni] action"),
    ("action-not-a-string", {"host": {"action": 1}}, "[host] action"),
    ("cidr-garbage", {"ip": {"block": ["not-an-address"]}}, "bad address"),
    ("cidr-prefix", {"ip": {"block": ["203.0.113.0/33"]}}, "bad address"),
    ("cidr-octet", {"ip": {"block": ["203.0.113.256/32"]}}, "bad address"),
    ("cidr-ipv6", {"ip": {"block": ["2001:db8::/32"]}}, "bad address"),
    ("dns-answer", {"dns": {"answer": "news.test"}}, "bad address"),
    ("dns-answer-ipv6", {"dns": {"answer": "2001:db8::1"}}, "bad address"),
    ("residual-negative", {"residual": {"seconds": -1}}, "[residual] seconds"),
    ("residual-float", {"residual": {"seconds": 1.5}}, "[residual] seconds"),
    ("residual-string", {"residual": {"seconds": "10"}}, "[residual] seconds"),
    ("poison-not-a-list", {"dns": {"poison": "news.test"}}, "[dns] poison"),
    ("sni-not-strings", {"sni": {"block": ["news.test", 3]}}, "[sni] block"),
    ("host-not-a-list", {"host": {"block": {"news.test": 1}}}, "[host] block"),
]


@pytest.mark.parametrize(
    ("document", "message"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_from_dict_rejects(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError) as caught:
        CensorProfile.from_dict(document)
    assert message in str(caught.value)


def test_profile_error_is_a_value_error() -> None:
    assert issubclass(ProfileError, ValueError)


@pytest.mark.parametrize(
    "document",
    [{"sni": ["news.test"]}, {"dns": "news.test"}, {"residual": 30}],
    ids=["sni-list", "dns-string", "residual-int"],
)
def test_from_dict_rejects_a_section_that_is_not_a_table(document: dict[str, Any]) -> None:
    with pytest.raises(ProfileError):
        CensorProfile.from_dict(document)


def test_from_dict_rejects_boolean_residual_seconds() -> None:
    with pytest.raises(ProfileError):
        CensorProfile.from_dict({"residual": {"seconds": True}})


# (id, file content or None for a missing file, a fragment of the error message)
BAD_FILES = [
    ("missing", None, "does not exist"),
    ("not-toml", "[sni\nblock = ", "not valid TOML"),
    ("duplicate-key", "[sni]\naction = 'rst'\naction = 'drop'\n", "not valid TOML"),
    ("bad-action", "[sni]\naction = 'reset'\n", "[sni] action"),
    ("unknown-table", "[ssl]\nblock = []\n", "unknown table"),
]


@pytest.mark.parametrize(
    ("content", "message"), [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES]
)
def test_load_rejects(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "profile.toml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ProfileError) as caught:
        CensorProfile.load(path)
    assert message in str(caught.value)


# -- matching -----------------------------------------------------------------------------

BLOCKED = ("news.test", "cdn.example")

# (id, name, the entry it matches or None)
NAMES: list[tuple[str, str, str | None]] = [
    ("exact", "news.test", "news.test"),
    ("subdomain", "www.news.test", "news.test"),
    ("deep-subdomain", "a.b.c.news.test", "news.test"),
    ("second-entry", "img.cdn.example", "cdn.example"),
    ("upper-case", "NEWS.Test", "news.test"),
    ("upper-case-subdomain", "WWW.NEWS.TEST", "news.test"),
    ("trailing-dot", "news.test.", "news.test"),
    ("trailing-dot-subdomain", "www.news.test.", "news.test"),
    ("suffix-without-dot", "evilnews.test", None),
    ("suffix-without-dot-2", "xcdn.example", None),
    ("parent-domain", "test", None),
    ("prefix-only", "news.test.evil", None),
    ("other", "allowed.test", None),
    ("empty", "", None),
    ("root", ".", None),
]


@pytest.mark.parametrize(
    ("name", "expected"), [case[1:] for case in NAMES], ids=[case[0] for case in NAMES]
)
def test_name_matches(name: str, expected: str | None) -> None:
    assert name_matches(name, BLOCKED) == expected


def test_name_matches_nothing_blocked() -> None:
    assert name_matches("news.test", ()) is None


def test_name_matches_returns_the_first_matching_entry() -> None:
    assert name_matches("www.news.test", ("news.test", "www.news.test")) == "news.test"
    assert name_matches("www.news.test", ("www.news.test", "news.test")) == "www.news.test"


def test_profile_entries_match_names_in_any_form() -> None:
    """Entries written with capitals and a trailing dot still match, once loaded."""
    profile = CensorProfile.from_dict({"sni": {"block": ["News.Test."]}})
    assert name_matches("www.NEWS.test.", profile.sni_block) == "news.test"
    assert name_matches("evilnews.test", profile.sni_block) is None


IP_PROFILE = CensorProfile.from_dict({"ip": {"block": ["203.0.113.80/32", "192.0.2.0/24"]}})

# (id, address, the blocking network or None)
ADDRESSES: list[tuple[str, str, str | None]] = [
    ("host-route", "203.0.113.80", "203.0.113.80/32"),
    ("next-to-host-route", "203.0.113.81", None),
    ("network-first", "192.0.2.0", "192.0.2.0/24"),
    ("network-inside", "192.0.2.77", "192.0.2.0/24"),
    ("network-last", "192.0.2.255", "192.0.2.0/24"),
    ("after-network", "192.0.3.0", None),
    ("censored-side", "198.51.100.10", None),
]


@pytest.mark.parametrize(
    ("address", "expected"),
    [case[1:] for case in ADDRESSES],
    ids=[case[0] for case in ADDRESSES],
)
def test_ip_blocked(address: str, expected: str | None) -> None:
    network = IP_PROFILE.ip_blocked(address)
    assert (str(network) if network else None) == expected


def test_ip_blocked_without_blocks() -> None:
    assert CensorProfile().ip_blocked("203.0.113.80") is None


def test_ip_blocked_rejects_a_non_address() -> None:
    with pytest.raises(ValueError):
        IP_PROFILE.ip_blocked("news.test")


# (id, document, blocked_names)
BLOCKED_NAMES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("none", {}, ()),
    ("ip-only", {"ip": {"block": ["203.0.113.80"]}}, ()),
    ("dns-only", {"dns": {"poison": ["a.test"]}}, ("a.test",)),
    (
        "all-in-order",
        {
            "dns": {"poison": ["a.test"]},
            "sni": {"block": ["b.test"]},
            "host": {"block": ["c.test"]},
        },
        ("a.test", "b.test", "c.test"),
    ),
    (
        "deduplicated-first-wins",
        {
            "dns": {"poison": ["news.test", "a.test"]},
            "sni": {"block": ["b.test", "News.Test."]},
            "host": {"block": ["news.test", "a.test", "c.test"]},
        },
        ("news.test", "a.test", "b.test", "c.test"),
    ),
]


@pytest.mark.parametrize(
    ("document", "expected"),
    [case[1:] for case in BLOCKED_NAMES],
    ids=[case[0] for case in BLOCKED_NAMES],
)
def test_blocked_names(document: dict[str, Any], expected: tuple[str, ...]) -> None:
    assert CensorProfile.from_dict(document).blocked_names == expected


@pytest.mark.parametrize("path", sorted(SHIPPED_PROFILES.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_profile_loads_and_watches_the_rendezvous(path: Path) -> None:
    """What ships is valid, and each watches the client's TLS and its NAT check."""
    profile = CensorProfile.load(path)
    assert profile.tls.active and profile.stun_change_request
