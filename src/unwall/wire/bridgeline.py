"""The bridge line: one line that gives a client everything it needs (protocol.md §6)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from unwall.wire.pin import normalize_pin
from unwall.wire.sealed import normalize_public_key

PREFIX = "unwall1"


class BridgeLineError(ValueError):
    pass


#: How many fronts one line may name (a client tries each in turn).
MAX_FRONTS = 16
#: How many ICE servers one line may name.
MAX_ICE = 8
#: The fields a line may have; `front=` and `ice=` may repeat.
FIELDS = ("broker", "pin", "front", "brokerkey", "ice")
_REPEATED = ("front", "ice")


@dataclass(frozen=True)
class BridgeLine:
    broker: str
    pin: str
    #: domain fronting: https:// fronts that forward to the broker by Host header; the
    #: client tries them in a random order (`front=` once per front)
    fronts: tuple[str, ...] = ()
    #: the key the client seals its offers to (unwall.wire.sealed); None: sent unsealed
    broker_key: str | None = None
    #: ICE servers: stun: and turn:/turns: URLs, never credentials (a client with a turn:
    #: URL asks the broker for credentials, sealed)
    ice: tuple[str, ...] = ()

    def format(self) -> str:
        line = f"{PREFIX} broker={quote(self.broker, safe=':/?&=@[]')} pin={self.pin}"
        if self.broker_key is not None:
            line += f" brokerkey={self.broker_key}"
        for front in self.fronts:
            line += f" front={quote(front, safe=':/?&=@[]')}"
        for url in self.ice:
            line += f" ice={quote(url, safe=':/?&=@[]')}"
        return line

    @classmethod
    def parse(cls, line: str) -> BridgeLine:
        words = line.split()
        if not words or words[0] != PREFIX:
            raise BridgeLineError(f"a bridge line starts with {PREFIX!r}; got {line[:40]!r}")
        fields: dict[str, str] = {}
        repeated: dict[str, list[str]] = {key: [] for key in _REPEATED}
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if not sep:
                raise BridgeLineError(f"bridge line field {word!r} is not key=value")
            if key not in FIELDS:
                raise BridgeLineError(
                    f"bridge line field {key[:32]!r} is not one this unwall knows "
                    f"({', '.join(FIELDS)}): a typo, or a line for a newer unwall"
                )
            if key in repeated:
                repeated[key].append(unquote(value))
            elif key in fields:
                raise BridgeLineError(f"bridge line field {key!r} is given twice")
            else:
                fields[key] = unquote(value)
        fronts, ice = repeated["front"], repeated["ice"]
        missing = [key for key in ("broker", "pin") if key not in fields]
        if missing:
            raise BridgeLineError(f"bridge line lacks {', '.join(missing)}")
        broker = fields["broker"]
        if not broker.startswith(("http://", "https://")):
            raise BridgeLineError(f"bridge line broker {broker!r} must be an http(s) URL")
        try:
            pin = normalize_pin(fields["pin"])
        except ValueError as exc:
            raise BridgeLineError(str(exc)) from exc
        for front in fronts:
            if not front.startswith("https://"):
                raise BridgeLineError(f"bridge line front {front!r} must be an https:// URL")
        if len(fronts) > MAX_FRONTS:
            raise BridgeLineError(f"a bridge line names at most {MAX_FRONTS} fronts")
        if len(set(fronts)) != len(fronts):
            raise BridgeLineError("a bridge line names one front twice")
        broker_key = fields.get("brokerkey")
        if broker_key is not None:
            try:
                broker_key = normalize_public_key(broker_key)
            except ValueError as exc:
                raise BridgeLineError(f"bridge line brokerkey: {exc}") from None
        for url in ice:
            if not url.startswith(("stun:", "turn:", "turns:")) or "@" in url or " " in url:
                raise BridgeLineError(
                    f"bridge line ice {url[:64]!r} must be a stun:, turn: or turns: URL "
                    "without credentials"
                )
        if len(ice) > MAX_ICE:
            raise BridgeLineError(f"a bridge line names at most {MAX_ICE} ICE servers")
        return cls(
            broker=broker, pin=pin, fronts=tuple(fronts), broker_key=broker_key, ice=tuple(ice)
        )
