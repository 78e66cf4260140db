"""The link model, sans-IO: loss (random and Gilbert-Elliott bursts), delay and jitter,
the bottleneck's rate and buffer; and the `[link]` table of a censor profile."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

import pytest

from unwall.lab.link import (
    JITTER_PERIOD,
    PRESETS,
    DirectionSpec,
    Link,
    LinkDirection,
    LinkError,
    LinkSpec,
    link_from_dict,
    link_from_state,
    parse_rate,
    preset,
)
from unwall.lab.profile import CensorProfile, ProfileError

N = 400_000


def _drive(spec: DirectionSpec, n: int = N, seed: int = 1, gap: float = 0.001) -> list[bool]:
    """Losses of n small packets arriving `gap` apart (True = lost)."""
    direction = LinkDirection(spec, seed)
    return [direction.admit(100, i * gap) is None for i in range(n)]


def _bursts(lost: list[bool]) -> list[int]:
    runs, run = [], 0
    for value in lost:
        if value:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    return runs


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("loss", [0.01, 0.05, 0.15])
def test_random_loss_has_the_mean_it_says(loss: float, seed: int) -> None:
    lost = _drive(DirectionSpec(loss=loss), seed=seed)
    assert sum(lost) / N == pytest.approx(loss, rel=0.05)
    assert statistics.fmean(_bursts(lost)) < 1.25  # independent: bursts of about 1


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize(("loss", "burst"), [(0.05, 3), (0.02, 5), (0.15, 2)])
def test_burst_loss_has_the_mean_and_burst_length_it_says(
    loss: float, burst: float, seed: int
) -> None:
    lost = _drive(DirectionSpec(loss=loss, burst=burst), seed=seed)
    assert sum(lost) / N == pytest.approx(loss, rel=0.07)
    assert statistics.fmean(_bursts(lost)) == pytest.approx(burst, rel=0.07)


def test_same_seed_same_losses_other_seed_other_losses() -> None:
    spec = DirectionSpec(loss=0.05, burst=3)
    assert _drive(spec, 10_000, seed=7) == _drive(spec, 10_000, seed=7)
    assert _drive(spec, 10_000, seed=7) != _drive(spec, 10_000, seed=8)


def test_no_loss_loses_nothing() -> None:
    assert not any(_drive(DirectionSpec(delay_ms=50, jitter_ms=10)))


def test_delay_and_jitter_stay_within_bounds_and_keep_order() -> None:
    direction = LinkDirection(DirectionSpec(delay_ms=90, jitter_ms=10), seed=1)
    arrivals = [i * 0.0005 for i in range(40_000)]  # 20 s at 2000 packets/s
    dues = [direction.admit(1200, t) for t in arrivals]
    delays = [due - t for due, t in zip(dues, arrivals, strict=True) if due is not None]
    assert min(delays) >= 0.080 - 1e-9
    assert max(delays) <= 0.100 + 1e-9
    assert statistics.fmean(delays) == pytest.approx(0.090, abs=0.002)
    assert statistics.pstdev(delays) > 0.003  # it does jitter
    valid = [due for due in dues if due is not None]
    assert valid == sorted(valid)  # never reordered


def test_jitter_wanders_smoothly() -> None:
    direction = LinkDirection(DirectionSpec(delay_ms=100, jitter_ms=20), seed=3)
    step = 0.001
    delays = [(direction.admit(100, i * step) or 0) - i * step for i in range(5000)]
    slope = max(abs(b - a) for a, b in itertools.pairwise(delays)) / step
    assert slope <= 2 * 0.020 / JITTER_PERIOD + 1e-6


def test_rate_serialises_packets_and_the_buffer_tail_drops() -> None:
    # 8 Mbit/s: a 1000-byte packet takes 1 ms; the buffer holds 10 ms.
    direction = LinkDirection(DirectionSpec(rate="8mbit", queue_ms=10), seed=1)
    dues = [direction.admit(1000, 0.0) for _ in range(30)]  # a burst, all at once
    kept = [due for due in dues if due is not None]
    assert kept[:3] == pytest.approx([0.001, 0.002, 0.003])
    assert len(kept) == 11  # waits of 0..10 ms fit; the rest is dropped
    assert direction.stats.queue_dropped == 19
    assert direction.stats.lost == 0
    # Later, the queue has drained and packets go through at once again.
    assert direction.admit(1000, 1.0) == pytest.approx(1.001)


def test_rate_limits_a_long_flow_to_the_rate() -> None:
    direction = LinkDirection(DirectionSpec(rate="10mbit", queue_ms=100), seed=1)
    # Offered 20 Mbit/s of 1250-byte packets (one every 0.5 ms) for 2 s.
    dues = [direction.admit(1250, i * 0.0005) for i in range(4000)]
    kept = [due for due in dues if due is not None]
    delivered_bits = len(kept) * 1250 * 8
    assert delivered_bits / max(kept) == pytest.approx(10e6, rel=0.03)


def test_stats_count_what_happened() -> None:
    link = Link(LinkSpec(up=DirectionSpec(loss=0.5), down=DirectionSpec(), seed=5))
    for i in range(1000):
        link.up.admit(100, i * 0.01)
        link.down.admit(200, i * 0.01)
    stats = link.stats()
    assert stats["up"]["packets"] == 1000
    assert 400 < stats["up"]["lost"] < 600
    assert stats["up"]["bytes"] == (1000 - stats["up"]["lost"]) * 100
    assert stats["down"] == {"packets": 1000, "bytes": 200_000, "lost": 0, "queue_dropped": 0}


# -- presets and descriptions ---------------------------------------------------------------


def test_presets_are_what_the_issue_table_says() -> None:
    assert PRESETS["clean"].is_perfect
    table = {
        "intercontinental": (180, 20, 0.01, 1, 50e6),
        "censored-lossy": (200, 30, 0.05, 3, 20e6),
        "hostile": (300, 50, 0.15, 1, 10e6),
    }
    for name, (rtt, rtt_jitter, loss, burst, rate) in table.items():
        spec = preset(name)
        assert spec.rtt_ms == rtt
        assert spec.up.jitter_ms + spec.down.jitter_ms == rtt_jitter
        for direction in (spec.up, spec.down):
            assert (direction.loss, direction.burst, direction.rate_bps) == (loss, burst, rate)


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(LinkError, match="intercontinental"):
        preset("moon")


def test_describe() -> None:
    assert preset("clean").describe() == "clean: no emulation"
    assert preset("censored-lossy").describe() == (
        "censored-lossy: each way 100 ms +-15, 5 % loss in bursts of 3, 20mbit"
    )


@pytest.mark.parametrize(("text", "bits"), [("20mbit", 20e6), ("500kbit", 5e5), ("1.5gbit", 1.5e9)])
def test_parse_rate(text: str, bits: float) -> None:
    assert parse_rate(text) == bits


def test_state_round_trip() -> None:
    for spec in PRESETS.values():
        assert link_from_state(spec.to_dict()) == spec


# -- the [link] table -----------------------------------------------------------------------


def test_link_table_from_a_preset_with_overrides() -> None:
    spec = link_from_dict({"preset": "hostile", "seed": 4, "loss": 0.1, "up": {"rate": "2mbit"}})
    assert spec.seed == 4
    assert spec.up.loss == spec.down.loss == 0.1
    assert spec.up.rate == "2mbit" and spec.down.rate == "10mbit"
    assert spec.up.delay_ms == 150
    assert spec.name == "hostile (modified)"


def test_link_table_from_numbers() -> None:
    spec = link_from_dict({"delay_ms": 25, "down": {"delay_ms": 75, "jitter_ms": 5}})
    assert spec.rtt_ms == 100
    assert spec.name == "custom"


def test_profile_carries_its_link() -> None:
    profile = CensorProfile.from_dict({"link": {"preset": "intercontinental"}})
    assert profile.link == preset("intercontinental")
    assert CensorProfile.from_dict({}).link.is_perfect


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"preset": "moon"}, "unknown link preset"),
        ({"delay": 5}, "unknown key"),
        ({"up": {"rtt": 5}}, r"unknown key\(s\) \['rtt'\] in \[link.up\]"),
        ({"up": 5}, r"\[link.up\] must be a table"),
        ({"loss": 1.5}, "loss must be a fraction"),
        ({"loss": "5%"}, "loss must be a fraction"),
        ({"delay_ms": -1}, "delay_ms must be a number >= 0"),
        ({"delay_ms": True}, "delay_ms must be a number >= 0"),
        ({"delay_ms": 10, "jitter_ms": 20}, "cannot exceed"),
        ({"burst": 0.5}, "burst"),
        ({"rate": "fast"}, "rate 'fast' must look like"),
        ({"seed": 1.5}, "seed must be a whole number"),
        ({"loss": 0.95, "burst": 1.5}, "not possible"),
    ],
)
def test_bad_link_tables_say_what_to_fix(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        CensorProfile.from_dict({"link": table})
