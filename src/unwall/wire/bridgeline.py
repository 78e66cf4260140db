"""The bridge line: one line that gives a client everything it needs (protocol.md §6)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from unwall.wire.pin import normalize_pin

PREFIX = "unwall1"


class BridgeLineError(ValueError):
    pass


@dataclass(frozen=True)
class BridgeLine:
    broker: str
    pin: str
    #: domain fronting: an https:// front that forwards to the broker by Host header
    front: str | None = None

    def format(self) -> str:
        line = f"{PREFIX} broker={quote(self.broker, safe=':/?&=@[]')} pin={self.pin}"
        if self.front:
            line += f" front={quote(self.front, safe=':/?&=@[]')}"
        return line

    @classmethod
    def parse(cls, line: str) -> BridgeLine:
        words = line.split()
        if not words or words[0] != PREFIX:
            raise BridgeLineError(f"a bridge line starts with {PREFIX!r}; got {line[:40]!r}")
        fields: dict[str, str] = {}
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if not sep:
                raise BridgeLineError(f"bridge line field {word!r} is not key=value")
            fields[key] = unquote(value)  # unknown keys are ignored (later versions add some)
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
        front = fields.get("front")
        if front is not None and not front.startswith("https://"):
            raise BridgeLineError(f"bridge line front {front!r} must be an https:// URL")
        return cls(broker=broker, pin=pin, front=front)
