"""What keeps one network from harvesting the broker: plain functions and classes, no I/O.

- :func:`network_of`: the network an address belongs to for every limit here, an IPv4 /24
  or an IPv6 /48 (one home, one office, one hosting customer, roughly).
- :class:`RateLimits`: token buckets per key (offers per client address, polls per
  volunteer address), with memory bounded whatever the number of keys.
- :func:`volunteer_group` and :func:`network_groups`: the broker splits volunteers into
  :data:`GROUPS` groups by a hash of their id, and matches a client network only with the
  volunteers of :data:`GROUPS_PER_NETWORK` groups, chosen by a hash of the network and the
  current period. So all the addresses of one network, however many, see the same small
  part of the pool for a period: an enumerator learns little more than one client does.

The matchmaker applies the groups and the per-network share of offers
(:class:`NetworkShares`); the HTTP shell applies the rate limits.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

#: Volunteers are split into this many groups ...
GROUPS: Final = 16
#: ... and a client network is matched with this many of them (1/8 of the pool) ...
GROUPS_PER_NETWORK: Final = 2
#: ... for this long, then with others.
GROUP_PERIOD: Final = 6 * 3600.0
#: Below this many volunteers the pool is too small to split: every client may use all.
GROUPS_MIN_POOL: Final = 64


def _ip(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as an IP (IPv4-mapped IPv6 as IPv4); None for none or not an IP."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def network_of(address: str | None) -> str:
    """The /24 (IPv4) or /48 (IPv6) of an address, as text; "" for none or not an IP
    (a Unix socket, a test client): such requests share no network limits."""
    ip = _ip(address)
    if ip is None:
        return ""
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def limit_key(address: str | None) -> str:
    """What a rate limit counts by: an IPv4 address, or an IPv6 /64 (one customer's
    link, where each device may take addresses at will)."""
    ip = _ip(address)
    if ip is None:
        return address or ""
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _hash(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode()).digest()


def volunteer_group(volunteer_id: str) -> int:
    return _hash("volunteer", volunteer_id)[0] % GROUPS


def network_groups(network: str, now_unix: float) -> frozenset[int]:
    """The groups a client network is matched with in the period of `now_unix`."""
    period = str(int(now_unix // GROUP_PERIOD))
    digest = _hash("network", network, period)
    groups: list[int] = []
    for byte in digest:
        if byte % GROUPS not in groups:
            groups.append(byte % GROUPS)
            if len(groups) == GROUPS_PER_NETWORK:
                break
    return frozenset(groups)


@dataclass(frozen=True)
class Rate:
    """`per_second` on average, in bursts of up to `burst`."""

    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and self.burst >= 1):
            raise ValueError("a rate needs per_second > 0 and a burst of at least 1")


class RateLimits:
    """A token bucket per key. :meth:`take` returns 0.0 when allowed, else the seconds until
    a token is there (a Retry-After). At most `max_keys` buckets are kept: the least
    recently used go first (a key forgotten that way starts again with a full bucket, which
    only a flood of distinct keys can cause, and each of those keys is then limited)."""

    def __init__(self, rate: Rate, max_keys: int = 100_000) -> None:
        self.rate = rate
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        tokens, since = self._buckets.pop(key, (self.rate.burst, now))
        tokens = min(self.rate.burst, tokens + (now - since) * self.rate.per_second)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate.per_second
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


#: How fast a network's count of offers is forgotten (half-life, seconds).
SHARE_HALF_LIFE: Final = 600.0
#: No network gets more than this share of recent offers while others can serve ...
SHARE_FLOOR: Final = 0.1
#: ... or twice its fair share among the networks volunteers poll from, if that is more.
SHARE_FAIR_FACTOR: Final = 2.0
#: The share is not enforced before this many offers (decayed) have been handed out.
SHARE_MIN_SAMPLE: Final = 20.0


class NetworkShares:
    """Exponentially decayed counts of offers handed to each volunteer network."""

    def __init__(self, half_life: float = SHARE_HALF_LIFE) -> None:
        self._rate = math.log(2) / half_life
        self._counts: dict[str, tuple[float, float]] = {}
        self._total = (0.0, 0.0)

    def _decayed(self, value: tuple[float, float], now: float) -> float:
        count, since = value
        return count * math.exp(-self._rate * max(0.0, now - since))

    def add(self, network: str, now: float) -> None:
        self._counts[network] = (self._decayed(self._counts.get(network, (0.0, now)), now) + 1, now)
        self._total = (self._decayed(self._total, now) + 1, now)
        if len(self._counts) > 4096:  # forget the networks that no longer count
            self._counts = {n: v for n, v in self._counts.items() if self._decayed(v, now) >= 0.01}

    def share(self, network: str, now: float) -> float:
        total = self._decayed(self._total, now)
        if total <= 0:
            return 0.0
        return self._decayed(self._counts.get(network, (0.0, now)), now) / total

    def over(self, network: str, networks: int, now: float) -> bool:
        """Whether `network` has had more than its bound of recent offers, with
        `networks` distinct volunteer networks in the pool."""
        if networks <= 2 or self._decayed(self._total, now) < SHARE_MIN_SAMPLE:
            return False
        cap = max(SHARE_FLOOR, SHARE_FAIR_FACTOR / networks)
        return self.share(network, now) > cap


__all__ = [
    "GROUPS",
    "GROUPS_MIN_POOL",
    "GROUPS_PER_NETWORK",
    "NetworkShares",
    "Rate",
    "RateLimits",
    "limit_key",
    "network_groups",
    "network_of",
    "volunteer_group",
]
