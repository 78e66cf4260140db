"""Egress destination policy: address ranges, ports, allow-lists and name resolution.

Addresses here are only parsed and classified, never contacted. The only real name
resolution is of ``localhost`` and of numeric strings; every other name goes through an
injected resolver, a test double for DNS, which these tests may not contact.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket

import pytest

from unwall import logs
from unwall.egress.policy import (
    EgressPolicy,
    NameNotResolved,
    PolicyDecision,
    PolicyDenied,
    Resolver,
)

DEFAULT = EgressPolicy()

# (address, refused range's words in the reason); every one of these is refused by default.
REFUSED = [
    # unspecified / "this network"
    ("0.0.0.0", "unspecified"),
    ("0.255.255.255", "unspecified"),
    ("::", "unspecified"),
    # loopback
    ("127.0.0.1", "loopback address (127.0.0.0/8)"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    # private
    ("10.0.0.0", "private"),
    ("10.0.0.1", "private address (10.0.0.0/8)"),
    ("10.255.255.255", "private"),
    ("172.16.0.0", "private"),
    ("172.31.255.255", "private address (172.16.0.0/12)"),
    ("192.168.0.1", "private address (192.168.0.0/16)"),
    ("192.168.255.255", "private"),
    ("fc00::1", "unique local"),
    ("fd12:3456:789a::1", "unique local"),
    ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "unique local"),
    # carrier-grade NAT
    ("100.64.0.0", "carrier-grade NAT"),
    ("100.100.100.100", "carrier-grade NAT"),
    ("100.127.255.255", "carrier-grade NAT (shared) address (100.64.0.0/10)"),
    # link-local
    ("169.254.0.1", "link-local"),
    ("169.254.169.254", "link-local address (169.254.0.0/16)"),  # cloud metadata service
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("fec0::1", "site-local"),
    # multicast
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    # reserved and broadcast
    ("240.0.0.1", "reserved address (240.0.0.0/4)"),
    ("255.255.255.254", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("192.0.0.8", "IETF protocol assignments"),
    ("100::1", "reserved"),  # discard-only, outside 2000::/3
    ("64:ff9b:1::a00:1", "reserved"),  # local-use NAT64, outside 2000::/3
    ("4000::1", "reserved"),
    ("e000::1", "reserved"),
    # documentation
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation address (198.51.100.0/24)"),
    ("203.0.113.255", "documentation"),
    ("2001:db8::1", "documentation"),
    ("2001:db8:ffff::1", "documentation"),
    ("3fff::1", "documentation"),
    # benchmarking
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking address (198.18.0.0/15)"),
    ("2001:2::1", "benchmarking"),
    # IPv4 embedded in IPv6, whose IPv4 is refused
    ("::ffff:127.0.0.1", "IPv4-mapped address for 127.0.0.1; 127.0.0.1 is a loopback"),
    ("::ffff:10.0.0.1", "10.0.0.1 is a private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("::ffff:255.255.255.255", "broadcast"),
    ("64:ff9b::7f00:1", "NAT64 address for 127.0.0.1; 127.0.0.1 is a loopback"),
    ("64:ff9b::10.1.2.3", "private"),
    ("64:ff9b::100.64.0.1", "carrier-grade NAT"),
    ("2002:7f00:1::", "6to4 address for 127.0.0.1; 127.0.0.1 is a loopback"),
    ("2002:c0a8:101::1", "6to4 address for 192.168.1.1"),
    ("2002:a9fe:a9fe::", "link-local"),
    ("::127.0.0.1", "IPv4-compatible address for 127.0.0.1"),
    ("::10.0.0.1", "private"),
    ("::0.0.0.2", "unspecified"),
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "1.0.0.0",
    "9.255.255.255",  # just below 10.0.0.0/8
    "11.0.0.0",  # just above
    "100.63.255.255",  # just below 100.64.0.0/10
    "100.128.0.0",  # just above
    "126.255.255.255",
    "128.0.0.0",
    "169.253.255.255",
    "169.255.0.0",
    "172.15.255.255",  # just below 172.16.0.0/12
    "172.32.0.0",  # just above
    "192.0.1.255",
    "192.0.3.0",
    "192.167.255.255",
    "192.169.0.0",
    "198.17.255.255",  # just below 198.18.0.0/15
    "198.20.0.0",  # just above
    "198.51.99.255",
    "198.51.101.0",
    "203.0.112.255",
    "203.0.114.0",
    "223.255.255.255",  # just below multicast
    "2606:4700::1",
    "2001:4860:4860::8888",
    "2a00:1450:4001::1",
    "2000::1",
    "3ffe:ffff::1",  # just below 3fff::/20
    "3fff:1000::1",  # just above
    "2001:db7:ffff::1",  # just below 2001:db8::/32
    "2001:db9::1",  # just above
    "2001:3::1",  # just above 2001:2::/48
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "64:ff9b::1.1.1.1",
    "2002:808:808::1",
    "::8.8.8.8",
]


@pytest.mark.parametrize(("address", "words"), REFUSED)
def test_default_policy_refuses(address: str, words: str) -> None:
    decision = DEFAULT.check_address(address)
    assert not decision.allowed
    assert words in decision.reason
    assert decision.reason.startswith(str(ipaddress.ip_address(address)))


@pytest.mark.parametrize("address", ALLOWED)
def test_default_policy_allows_public_addresses(address: str) -> None:
    decision = DEFAULT.check_address(address)
    assert decision.allowed, decision.reason
    assert "public" in decision.reason


@pytest.mark.parametrize(
    "address",
    [ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")],
)
def test_check_address_takes_address_objects(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    assert not DEFAULT.check_address(address).allowed


@pytest.mark.parametrize("text", ["", "localhost", "1.2.3", "256.0.0.1", "[::1]", "01.2.3.4"])
def test_check_address_rejects_non_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="is not an IP address"):
        DEFAULT.check_address(text)


def test_reason_is_a_readable_sentence() -> None:
    assert DEFAULT.check_address("127.0.0.1") == PolicyDecision(
        False, "127.0.0.1 is a loopback address (127.0.0.0/8)"
    )


# --- allow-list ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allow", "address", "allowed"),
    [
        (["127.0.0.0/8"], "127.0.0.1", True),
        (["127.0.0.0/8"], "::ffff:127.0.0.1", True),  # embedded IPv4 follows the allow-list
        (["127.0.0.0/8"], "64:ff9b::7f00:1", True),
        (["127.0.0.0/8"], "::1", False),
        (["127.0.0.0/8"], "10.0.0.1", False),
        (["127.0.0.1"], "127.0.0.1", True),  # a bare address is a /32
        (["127.0.0.1"], "127.0.0.2", False),
        (["10.1.0.0/16"], "10.1.255.255", True),
        (["10.1.0.0/16"], "10.2.0.0", False),
        (["10.1.2.3/16"], "10.1.0.1", True),  # host bits are ignored
        (["0.0.0.0/0"], "10.0.0.1", True),
        (["0.0.0.0/0"], "127.0.0.1", True),
        (["0.0.0.0/0"], "255.255.255.255", True),
        (["0.0.0.0/0"], "::ffff:192.168.0.1", True),
        (["0.0.0.0/0"], "::1", False),
        (["0.0.0.0/0"], "fd00::1", False),
        (["::/0"], "::1", True),
        (["::/0"], "fe80::1", True),
        (["::/0"], "127.0.0.1", False),
        (["fd00::/8"], "fd00::1", True),
        (["fd00::/8"], "fc00::1", False),
        ([" 192.168.0.0/16 ", "::1/128"], "192.168.1.1", True),
        ([" 192.168.0.0/16 ", "::1/128"], "::1", True),
        ([], "127.0.0.1", False),
    ],
)
def test_allow_list_overrides_refusals(allow: list[str], address: str, allowed: bool) -> None:
    decision = EgressPolicy.from_strings(allow).check_address(address)
    assert decision.allowed is allowed, decision.reason
    assert ("allow-list" in decision.reason) is allowed


def test_allow_list_accepts_one_string() -> None:
    policy = EgressPolicy.from_strings("10.0.0.0/8")
    assert policy.allow_networks == (ipaddress.IPv4Network("10.0.0.0/8"),)


def test_allow_list_can_be_given_as_networks() -> None:
    policy = EgressPolicy(allow_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    assert policy.check_address("127.0.0.1").allowed


@pytest.mark.parametrize(
    "entry", ["", "localhost", "10.0.0.0/33", "10.0.0/8", "fd00::/129", "10.0.0.0/8,11.0.0.0/8"]
)
def test_allow_list_rejects_bad_entries(entry: str) -> None:
    with pytest.raises(ValueError, match=r"allow-list entry .* is not a network; write it like"):
        EgressPolicy.from_strings([entry])


# --- ports --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ("80", {80}),
        ("80,443", {80, 443}),
        ("80,443,8000-8002", {80, 443, 8000, 8001, 8002}),
        (" 80 , 443 ", {80, 443}),
        ("443,443", {443}),
        ("1", {1}),
        ("65535", {65535}),
        ("5-5", {5}),
        ("1-65535", set(range(1, 65536))),
        ("22,20-23", {20, 21, 22, 23}),
    ],
)
def test_port_list_parsing(ports: str, expected: set[int]) -> None:
    assert EgressPolicy.from_strings(ports=ports).allowed_ports == frozenset(expected)


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ("", "'' is not a port or a range of ports; write it like 80,443,8000-8100"),
        (" ", "not a port or a range"),
        ("http", "'http' is not a port"),
        ("80,,443", "'' is not a port"),
        ("80,", "'' is not a port"),
        ("-5", "'-5' is not a port"),
        ("1-2-3", "not a port or a range"),
        ("80-", "not a port or a range"),
        ("+80", "not a port or a range"),
        ("8_0", "not a port or a range"),
        ("٨٠", "not a port or a range"),  # Arabic-Indic digits, which int() would take
        ("80.5", "not a port or a range"),
        ("0", "0 is not a TCP port"),
        ("65536", "65536 is not a TCP port"),
        ("0-80", "0 is not a TCP port"),
        ("443-70000", "70000 is not a TCP port"),
        ("100-50", "the range 100-50 is backwards; write 50-100"),
    ],
)
def test_port_list_errors(ports: str, message: str) -> None:
    with pytest.raises(ValueError, match="^port list .*" + re.escape(message)):
        EgressPolicy.from_strings(ports=ports)


@pytest.mark.parametrize(
    ("ports", "port", "allowed"),
    [
        (None, 1, True),
        (None, 80, True),
        (None, 65535, True),
        (None, 0, False),
        (None, 65536, False),
        (None, -1, False),
        ("80,443", 443, True),
        ("80,443", 22, False),
        ("80,443", 0, False),
        ("8000-8100", 7999, False),
        ("8000-8100", 8000, True),
        ("8000-8100", 8100, True),
        ("8000-8100", 8101, False),
    ],
)
def test_check_port(ports: str | None, port: int, allowed: bool) -> None:
    decision = EgressPolicy.from_strings(ports=ports).check_port(port)
    assert decision.allowed is allowed
    assert f"port {port}" in decision.reason


# --- resolve ------------------------------------------------------------------------------


def fixed_resolver(answers: list[str]) -> tuple[list[tuple[str, int]], Resolver]:
    """A test double for DNS, which these tests may not contact: returns fixed answers."""
    calls: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return list(answers)

    return calls, resolve


async def never_called(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolver called for {host}:{port}")


async def test_localhost_is_refused_through_the_real_resolver() -> None:
    with pytest.raises(PolicyDenied) as caught:
        await DEFAULT.resolve("localhost", 80)
    assert caught.value.host == "localhost"
    assert caught.value.port == 80
    assert "localhost resolves only to addresses the egress refuses" in caught.value.reason
    assert "loopback" in caught.value.reason
    assert caught.value.reason in str(caught.value)


async def test_localhost_is_allowed_when_the_allow_list_says_so() -> None:
    policy = EgressPolicy.from_strings(["127.0.0.0/8", "::1/128"])
    addresses = await policy.resolve("localhost", 80)
    assert addresses
    assert all(ipaddress.ip_address(a).is_loopback for a in addresses)


async def test_numeric_name_is_resolved_and_refused() -> None:
    # "2130706433" is 127.0.0.1 to getaddrinfo but not an IP literal to ipaddress.
    try:
        socket.getaddrinfo("2130706433", 80, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pytest.skip("this libc does not read 2130706433 as a numeric address")
    with pytest.raises(PolicyDenied, match=re.escape("its policy: no loopback addresses")):
        await DEFAULT.resolve("2130706433", 80)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("8.8.8.8", ["8.8.8.8"]),
        ("2606:4700::1", ["2606:4700::1"]),
        ("2606:4700:0::0:1", ["2606:4700::1"]),
        ("::ffff:8.8.8.8", [str(ipaddress.ip_address("::ffff:8.8.8.8"))]),
    ],
)
async def test_ip_literals_are_checked_not_resolved(host: str, expected: list[str]) -> None:
    assert await DEFAULT.resolve(host, 443, resolver=never_called) == expected


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        ("10.0.0.1", "10.0.0.1 is a private address"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("::ffff:127.0.0.1", "127.0.0.1 is a loopback address"),
    ],
)
async def test_refused_ip_literals(host: str, words: str) -> None:
    with pytest.raises(PolicyDenied) as caught:
        await DEFAULT.resolve(host, 80, resolver=never_called)
    assert words in caught.value.reason
    assert caught.value.host == host


async def test_refused_port_is_checked_before_resolving() -> None:
    policy = EgressPolicy.from_strings(ports="443")
    with pytest.raises(PolicyDenied, match="port 25 is not among the ports"):
        await policy.resolve("mail.example", 25, resolver=never_called)
    with pytest.raises(PolicyDenied, match="port 0 is not a TCP port"):
        await DEFAULT.resolve("8.8.8.8", 0, resolver=never_called)


async def test_name_resolving_to_a_private_address_is_refused() -> None:
    calls, resolver = fixed_resolver(["10.0.0.1"])
    with pytest.raises(PolicyDenied) as caught:
        await DEFAULT.resolve("intranet.example", 443, resolver=resolver)
    assert caught.value.reason == (
        "intranet.example resolves only to addresses the egress refuses "
        "(its policy: no private addresses)"
    )
    assert calls == [("intranet.example", 443)]


async def test_name_resolving_to_a_private_address_is_allowed_by_the_allow_list() -> None:
    _, resolver = fixed_resolver(["10.0.0.1"])
    policy = EgressPolicy.from_strings(["10.0.0.0/8"])
    addresses = await policy.resolve("intranet.example", 443, resolver=resolver)
    assert addresses == ["10.0.0.1"]


async def test_reason_names_every_refusing_rule() -> None:
    _, resolver = fixed_resolver(["192.168.1.1", "127.0.0.1", "::1"])
    rules = "its policy: no loopback addresses, no private addresses"
    with pytest.raises(PolicyDenied, match=re.escape(rules)):
        await DEFAULT.resolve("home.example", 80, resolver=resolver)


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["10.0.0.1", "93.184.216.34"], ["93.184.216.34"]),
        (
            ["10.0.0.1", "93.184.216.34", "127.0.0.1", "93.184.216.34", "2606:4700::1", "::1"],
            ["93.184.216.34", "2606:4700::1"],
        ),
        (["8.8.8.8", "not-an-address", "1.1.1.1"], ["8.8.8.8", "1.1.1.1"]),
        (["fe80::1%eth0", "1.1.1.1"], ["1.1.1.1"]),
    ],
)
async def test_mixed_answers_keep_only_allowed_addresses_in_order(
    answers: list[str], expected: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    _, resolver = fixed_resolver(answers)
    with caplog.at_level(logging.DEBUG, logger="unwall.egress.policy"):
        addresses = await DEFAULT.resolve("mixed.example", 443, resolver=resolver)
    assert addresses == expected
    assert caplog.text == ""  # the line names the host: only with --log-destinations
    logs.log_destinations(True)
    try:
        with caplog.at_level(logging.DEBUG, logger="unwall.egress.policy"):
            await DEFAULT.resolve("mixed.example", 443, resolver=resolver)
    finally:
        logs.log_destinations(False)
    assert "mixed.example: dropping refused addresses" in caplog.text


async def test_all_allowed_answers_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    answers = ["2606:4700::1", "8.8.8.8", "2606:4700:0::1", "8.8.4.4", "8.8.8.8"]
    _, resolver = fixed_resolver(answers)
    with caplog.at_level(logging.DEBUG, logger="unwall.egress.policy"):
        addresses = await DEFAULT.resolve("dns.example", 53, resolver=resolver)
    assert addresses == ["2606:4700::1", "8.8.8.8", "8.8.4.4"]
    assert caplog.text == ""


async def test_name_resolving_to_nothing() -> None:
    _, resolver = fixed_resolver([])
    with pytest.raises(
        NameNotResolved, match=re.escape("nothing.example does not resolve")
    ) as caught:
        await DEFAULT.resolve("nothing.example", 443, resolver=resolver)
    assert caught.value.host == "nothing.example"


@pytest.mark.parametrize(
    "error",
    [
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        OSError("network is down"),
        UnicodeError("label too long"),
        NameNotResolved("failing.example", "NXDOMAIN"),
    ],
)
async def test_resolver_failures_become_name_not_resolved(error: Exception) -> None:
    async def failing(host: str, port: int) -> list[str]:
        raise error

    with pytest.raises(NameNotResolved, match=re.escape("failing.example does not resolve")):
        await DEFAULT.resolve("failing.example", 443, resolver=failing)


async def test_a_refusal_never_tells_what_a_name_resolved_to() -> None:
    """Issue 11, row 6: the reason goes back to the client; naming the resolved address
    would let anyone query the egress's internal DNS through it."""
    _, resolver = fixed_resolver(["169.254.169.254", "10.1.2.3", "fd00::1", "not-an-ip"])
    with pytest.raises(PolicyDenied) as caught:
        await DEFAULT.resolve("metadata.example", 80, resolver=resolver)
    reason = str(caught.value)
    for leak in ("169.254", "10.1.2.3", "fd00", "not-an-ip", "/16", "/8"):
        assert leak not in reason, reason
    assert "no link-local addresses" in reason
    assert "no private addresses" in reason
    assert "IP addresses only" in reason
