"""The lab's link emulator, sans-IO: what the long path between the censored network and
the free world does to each packet (delay, jitter, loss, bursts of loss, a rate limit).

This module decides; it does no I/O. :class:`LinkDirection` takes one packet's size and
arrival time and answers when the packet leaves the far end of the link, or that it is
lost. The shell that holds real packets for that long is `unwall.lab.delayline`, the one
place that knows how packets are held (NFQUEUE today); nothing else in the lab does.

The model, per direction:
- **rate**: a bottleneck of `rate` bits/s with a tail-drop buffer of `queue_ms` worth of
  that rate: a packet waits for the ones ahead of it, and is dropped when the wait would
  exceed the buffer (a router's queue, not random loss);
- **delay and jitter**: a one-way delay of `delay_ms`, plus an offset that wanders
  smoothly within +-`jitter_ms` (new random targets every JITTER_PERIOD, linearly joined):
  real paths jitter without reordering every packet, and this keeps packets in order;
- **loss**: random with mean `loss`; with `burst` > 1, a Gilbert-Elliott chain whose mean
  loss is `loss` and whose bursts last `burst` packets on average (good state: no loss; bad
  state: every packet lost; P(bad->good) = 1/burst, P(good->bad) = loss/(burst*(1-loss))).
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

JITTER_PERIOD = 0.25  # seconds between the jitter offset's random targets

_RATE = re.compile(r"(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)")
_RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


class LinkError(ValueError):
    """A link description that cannot be emulated; the message says what to change."""


def parse_rate(text: str) -> float:
    """'20mbit' -> 20e6 bits per second."""
    match = _RATE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise LinkError(f"rate {text!r} must look like 500kbit, 20mbit or 1gbit")
    return float(match.group(1)) * _RATE_UNITS[match.group(2)]


@dataclass(frozen=True)
class DirectionSpec:
    """What one direction of the link does; zero everywhere is a perfect wire."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    burst: float = 1.0
    rate: str = ""  # "" = no limit
    queue_ms: float = 100.0

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms", "queue_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise LinkError(f"{name} must be a number >= 0, not {value!r}")
        if self.jitter_ms > self.delay_ms:
            raise LinkError(
                f"jitter_ms ({self.jitter_ms}) cannot exceed delay_ms ({self.delay_ms})"
            )
        if isinstance(self.loss, bool) or not isinstance(self.loss, int | float):
            raise LinkError(f"loss must be a fraction such as 0.05, not {self.loss!r}")
        if not 0 <= self.loss < 1:
            raise LinkError(f"loss must be a fraction in [0, 1), e.g. 0.05, not {self.loss}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int | float):
            raise LinkError(f"burst must be a number >= 1, not {self.burst!r}")
        if self.burst < 1:
            raise LinkError(f"burst (mean packets per loss burst) must be >= 1, not {self.burst}")
        if self.loss and self.burst > 1 and self.loss / (self.burst * (1 - self.loss)) >= 1:
            raise LinkError(f"loss {self.loss} with bursts of {self.burst} is not possible")
        if self.rate:
            parse_rate(self.rate)

    @property
    def rate_bps(self) -> float | None:
        return parse_rate(self.rate) if self.rate else None

    @property
    def is_perfect(self) -> bool:
        return not (self.delay_ms or self.jitter_ms or self.loss or self.rate)

    def describe(self) -> str:
        parts = [f"{self.delay_ms:g} ms"]
        if self.jitter_ms:
            parts[0] += f" +-{self.jitter_ms:g}"
        if self.loss:
            bursts = f" in bursts of {self.burst:g}" if self.burst > 1 else ""
            parts.append(f"{self.loss * 100:g} % loss{bursts}")
        if self.rate:
            parts.append(self.rate)
        return ", ".join(parts)


@dataclass(frozen=True)
class LinkSpec:
    """Both directions: `up` is censored -> internet, `down` is internet -> censored."""

    up: DirectionSpec = field(default_factory=DirectionSpec)
    down: DirectionSpec = field(default_factory=DirectionSpec)
    name: str = "clean"
    seed: int | None = None  # the same seed gives the same losses for the same packets

    @property
    def is_perfect(self) -> bool:
        return self.up.is_perfect and self.down.is_perfect

    @property
    def rtt_ms(self) -> float:
        return self.up.delay_ms + self.down.delay_ms

    def describe(self) -> str:
        if self.is_perfect:
            return f"{self.name}: no emulation"
        if self.up == self.down:
            return f"{self.name}: each way {self.up.describe()}"
        return f"{self.name}: up {self.up.describe()}; down {self.down.describe()}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "up": asdict(self.up),
            "down": asdict(self.down),
        }


def _symmetric(name: str, **values: Any) -> LinkSpec:
    direction = DirectionSpec(**values)
    return LinkSpec(up=direction, down=direction, name=name)


#: Named paths a user picks without writing TOML (RTT = twice the one-way delay).
PRESETS: dict[str, LinkSpec] = {
    "clean": LinkSpec(name="clean"),
    "intercontinental": _symmetric(
        "intercontinental", delay_ms=90, jitter_ms=10, loss=0.01, rate="50mbit"
    ),
    "censored-lossy": _symmetric(
        "censored-lossy", delay_ms=100, jitter_ms=15, loss=0.05, burst=3, rate="20mbit"
    ),
    "hostile": _symmetric("hostile", delay_ms=150, jitter_ms=25, loss=0.15, rate="10mbit"),
}

_DIRECTION_KEYS = {f.name for f in fields(DirectionSpec)}
_LINK_KEYS = _DIRECTION_KEYS | {"preset", "seed", "up", "down"}


def preset(name: str) -> LinkSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise LinkError(f"unknown link preset {name!r}; known: {', '.join(PRESETS)}") from None


def _checked_table(value: Any, where: str, known: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LinkError(f"{where} must be a table")
    unknown = set(value) - known
    if unknown:
        raise LinkError(f"unknown key(s) {sorted(unknown)} in {where}; known: {sorted(known)}")
    return value


def link_from_dict(table: dict[str, Any]) -> LinkSpec:
    """A profile's `[link]` table: a preset, numbers for both directions, and optional
    `[link.up]` / `[link.down]` tables that override them for one direction."""
    _checked_table(table, "[link]", _LINK_KEYS)
    base = preset(table["preset"]) if "preset" in table else LinkSpec(name="custom")
    name = table.get("preset", "custom")
    both = {k: v for k, v in table.items() if k in _DIRECTION_KEYS}
    directions = {}
    for side in ("up", "down"):
        overrides = _checked_table(table.get(side, {}), f"[link.{side}]", _DIRECTION_KEYS)
        try:
            directions[side] = replace(getattr(base, side), **{**both, **overrides})
        except TypeError as exc:
            raise LinkError(f"[link]: {exc}") from None
    if both or table.get("up") or table.get("down"):
        name = f"{name} (modified)" if "preset" in table else "custom"
    seed = table.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise LinkError(f"[link] seed must be a whole number, not {seed!r}")
    return LinkSpec(up=directions["up"], down=directions["down"], name=name, seed=seed)


def link_from_state(data: dict[str, Any]) -> LinkSpec:
    try:
        return LinkSpec(
            up=DirectionSpec(**data["up"]),
            down=DirectionSpec(**data["down"]),
            name=str(data.get("name", "custom")),
            seed=data.get("seed"),
        )
    except (KeyError, TypeError) as exc:
        raise LinkError(f"bad link state: {exc}") from None


@dataclass
class DirectionStats:
    packets: int = 0
    bytes: int = 0
    lost: int = 0  # random / burst loss
    queue_dropped: int = 0  # the bottleneck's buffer was full

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class LinkDirection:
    """One direction of the link: a packet's size and arrival time in, its departure
    time out (None: the packet is lost). Times are seconds on any monotonic clock."""

    def __init__(self, spec: DirectionSpec, seed: int | None = None) -> None:
        self.spec = spec
        self.stats = DirectionStats()
        self._loss_rng = random.Random(seed)
        self._jitter_rng = random.Random(None if seed is None else seed + 7919)
        self._rate = spec.rate_bps
        self._queue_s = spec.queue_ms / 1000
        self._delay = spec.delay_ms / 1000
        self._jitter = spec.jitter_ms / 1000
        self._busy_until = 0.0
        self._last_due = 0.0
        self._bad = False  # Gilbert-Elliott state
        if spec.burst > 1 and spec.loss:
            self._to_good = 1 / spec.burst
            self._to_bad = spec.loss / (spec.burst * (1 - spec.loss))
        else:
            self._to_good = self._to_bad = 0.0
        self._knot_index = -1
        self._knot_from = 0.0
        self._knot_to = 0.0

    def admit(self, size: int, now: float) -> float | None:
        self.stats.packets += 1
        sent = now
        if self._rate is not None:
            start = max(now, self._busy_until)
            if start - now > self._queue_s + 1e-9:
                self.stats.queue_dropped += 1
                return None
            sent = start + size * 8 / self._rate
            self._busy_until = sent
        if self._lost():
            self.stats.lost += 1
            return None
        due = max(sent + self._delay + self._offset(sent), self._last_due)
        self._last_due = due
        self.stats.bytes += size
        return due

    def _lost(self) -> bool:
        loss = self.spec.loss
        if not loss:
            return False
        if self._to_good == 0.0:
            return self._loss_rng.random() < loss
        if self._bad:
            if self._loss_rng.random() < self._to_good:
                self._bad = False
        elif self._loss_rng.random() < self._to_bad:
            self._bad = True
        return self._bad

    def _offset(self, t: float) -> float:
        """The jitter offset at time t: random targets every JITTER_PERIOD, joined
        linearly (slope at most 2 x jitter / JITTER_PERIOD, so order is kept)."""
        if not self._jitter:
            return 0.0
        index = int(t // JITTER_PERIOD)
        if index != self._knot_index:
            if index == self._knot_index + 1:
                self._knot_from = self._knot_to
            else:
                self._knot_from = self._jitter_rng.uniform(-self._jitter, self._jitter)
            self._knot_to = self._jitter_rng.uniform(-self._jitter, self._jitter)
            self._knot_index = index
        fraction = t / JITTER_PERIOD - index
        return self._knot_from + (self._knot_to - self._knot_from) * fraction


class Link:
    """Both directions of one emulated link."""

    def __init__(self, spec: LinkSpec) -> None:
        self.spec = spec
        seed_down = None if spec.seed is None else spec.seed + 1
        self.up = LinkDirection(spec.up, spec.seed)
        self.down = LinkDirection(spec.down, seed_down)

    def stats(self) -> dict[str, Any]:
        return {
            "link": self.spec.name,
            "up": self.up.stats.as_dict(),
            "down": self.down.stats.as_dict(),
        }
