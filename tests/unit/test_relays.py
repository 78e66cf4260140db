"""Which relay URLs a broker names the headless volunteer opens (unwall.volunteer.relays)."""

from __future__ import annotations

import pytest

from unwall.volunteer.relays import RelayHost, RelayPolicy, RelayRefused, address_refusal

OWN = "ws://127.0.0.1:7000/v1/relay"


def policy(*patterns: str, own: str = OWN) -> RelayPolicy:
    return RelayPolicy(own, [RelayHost.parse(pattern) for pattern in patterns])


def refused(policy: RelayPolicy, url: str) -> RelayRefused:
    with pytest.raises(RelayRefused) as caught:
        policy.check(url)
    return caught.value


@pytest.mark.parametrize(
    ("text", "scheme", "host", "wildcard", "port"),
    [
        ("egress.example", "wss", "egress.example", False, None),
        ("Egress.Example.:8443", "wss", "egress.example", False, 8443),
        ("*.egress.example", "wss", "egress.example", True, None),
        ("ws://relay.lan", "ws", "relay.lan", False, None),
        ("ws://127.0.0.1:7001", "ws", "127.0.0.1", False, 7001),
        ("wss://[2001:DB8::1]:443", "wss", "2001:db8::1", False, 443),
    ],
)
def test_patterns(text: str, scheme: str, host: str, wildcard: bool, port: int | None) -> None:
    pattern = RelayHost.parse(text)
    assert (pattern.scheme, pattern.host, pattern.wildcard, pattern.port) == (
        scheme,
        host,
        wildcard,
        port,
    )


@pytest.mark.parametrize(
    "text",
    ["", "*", "*.com", "http://egress.example", "egress.example/v1/relay", "egress.example:0",
     "egress.example:70000", "[not-v6]", "::1", "-bad.example", "égress.example", "a b"],
)  # fmt: skip
def test_bad_patterns(text: str) -> None:
    with pytest.raises(ValueError):
        RelayHost.parse(text)


def test_no_broker_relay_but_to_our_own_egress_by_default() -> None:
    relays = policy()
    assert relays.check(None) == (relays.own_egress, False)
    named, resolve = relays.check("ws://127.0.0.1:7000/v1/relay?v=1#x")
    assert (str(named), resolve) == ("ws://127.0.0.1:7000/v1/relay?v=1", False)
    for url in (
        "ws://127.0.0.1:7001/v1/relay",  # another port of our own egress's host
        "wss://127.0.0.1:7000/v1/relay",  # another scheme: another origin
        "ws://localhost:7000/v1/relay",  # another name for it
        "ws://[::1]:7000/v1/relay",
        "wss://egress.example/v1/relay",
        "ws://10.0.0.1/v1/relay",
        "ws://169.254.169.254/v1/relay",
    ):
        assert "neither this volunteer's --egress nor" in refused(relays, url).reason, url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ws://127.0.0.1:7000/internal/admin?x=1", "its path is not /v1/relay"),
        ("ws://127.0.0.1:7000/v1/relay/", "its path is not /v1/relay"),
        ("ws://127.0.0.1:7000/v1/relay/../admin", "its path is not /v1/relay"),
        ("ws://127.0.0.1:7000/", "its path is not /v1/relay"),
        ("ws://u:p@127.0.0.1:7000/v1/relay", "it carries a user name or password"),
        ("http://127.0.0.1:7000/v1/relay", "it is not a ws:// or wss:// URL"),
        ("not a url", "it is not a ws:// or wss:// URL"),
        ("ws:///v1/relay", "it is not a ws:// or wss:// URL"),
        ("ws://127.0.0.1:7000/v1/relay?" + "x" * 2048, "longer than 2048"),
    ],
)
def test_what_no_relay_may_be(url: str, reason: str) -> None:
    assert reason in refused(policy("*.egress.example"), url).reason


def test_patterns_allow_hosts_over_wss_and_names_are_resolved() -> None:
    relays = policy("egress.example", "*.pool.example:8443", "ws://relay.example")
    assert relays.check("wss://egress.example/v1/relay")[1] is True
    assert relays.check("wss://egress.example:9000/v1/relay")[1] is True  # any port
    assert relays.check("wss://a.b.pool.example:8443/v1/relay")[1] is True
    assert relays.check("ws://relay.example/v1/relay")[1] is True
    assert "wss:// only" in refused(relays, "ws://egress.example/v1/relay").reason
    assert "wss:// only" not in refused(relays, "wss://pool.example:8443/v1/relay").reason
    refused(relays, "wss://a.pool.example/v1/relay")  # not port 8443
    refused(relays, "wss://egress.example.evil/v1/relay")
    refused(relays, "wss://evilegress.example/v1/relay")


def test_an_address_the_operator_writes_is_trusted_others_are_checked() -> None:
    relays = policy("ws://127.0.0.1:7001", "*.0.0.1", "[::1]")
    assert relays.check("ws://127.0.0.1:7001/v1/relay") == (
        relays.check("ws://127.0.0.1:7001/v1/relay")[0],
        False,
    )
    assert relays.check("wss://[::1]:9/v1/relay")[1] is False
    # a wildcard that happens to match the text of an address is no way around the check
    assert refused(relays, "wss://10.0.0.1/v1/relay").reason == "it is a private address"


@pytest.mark.parametrize(
    ("address", "refusal"),
    [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("0.0.0.0", "an unspecified ('this network') address"),
        ("10.0.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fd00::1", "a private (unique local) address"),
        ("64:ff9b::a00:1", "a private address"),
        ("100.64.0.1", "a carrier-grade NAT (shared) address"),
        ("169.254.169.254", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("224.0.0.1", "a multicast address"),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("203.0.113.7", None),  # TEST-NET: the lab
        ("198.51.100.1", None),
    ],
)
def test_addresses(address: str, refusal: str | None) -> None:
    assert address_refusal(address) == refusal


async def test_a_name_is_refused_when_it_resolves_to_loopback() -> None:
    relays = policy("localhost", "ws://localhost")
    with pytest.raises(RelayRefused) as caught:
        await relays.vet("wss://localhost:9/v1/relay?ticket=SECRET")
    assert caught.value.reason == "localhost resolves to a loopback address"
    assert caught.value.where == "wss://localhost:9"
    assert str(await relays.vet(None)) == OWN


def test_where_says_no_secret() -> None:
    error = refused(policy(), "ws://u:p@10.0.0.1:81/x?offer=o1&ticket=SECRET#frag")
    assert error.where == "ws://10.0.0.1:81"
    assert "SECRET" not in str(error) and "o1" not in str(error) and "u:p" not in str(error)
