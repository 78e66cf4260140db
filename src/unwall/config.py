"""The one configuration loader: defaults, then a TOML file, then command-line flags.

Each role reads its own table of the TOML file (`[client]`, `[egress]`, ...), with keys
named like the long flags (`socks = "127.0.0.1:1080"`, `ice_server = ["stun:..."]`).
A flag given on the command line wins over the file; the file wins over the default.

A secret (`Option(secret=True)`) never goes on a command line, where every local user can
read it (/proc/PID/cmdline): it comes from the file, or from the environment variable
`UNWALL_<KEY>` (e.g. `UNWALL_REPORT_SECRET`), which wins over the file; its flag only
says so.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Option:
    flag: str  # "--socks"
    help: str
    default: Any = None
    type: Callable[[str], Any] = str
    repeat: bool = False  # may be given several times; a list in TOML
    is_switch: bool = False
    secret: bool = False  # only from the file or the environment, never a flag

    @property
    def environment(self) -> str:
        return "UNWALL_" + self.key.upper()

    @property
    def key(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def add_options(parser: argparse.ArgumentParser, options: list[Option]) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML file with a table for this role"
    )
    for option in options:
        shown = f" (default: {option.default})" if option.default not in (None, [], False) else ""
        if option.secret:
            parser.add_argument(
                option.flag,
                type=_refuse_secret(option),
                default=None,
                metavar="(not here)",
                help=f"{option.help}: `{option.key} = ...` in the --config file, or the "
                f"environment variable {option.environment}; never on the command line",
            )
        elif option.is_switch:
            parser.add_argument(
                option.flag, action="store_true", default=None, help=option.help + shown
            )
        elif option.repeat:
            parser.add_argument(
                option.flag, action="append", type=option.type, default=None, help=option.help
            )
        else:
            parser.add_argument(
                option.flag, type=option.type, default=None, help=option.help + shown
            )


def resolve(args: argparse.Namespace, options: list[Option], section: str) -> dict[str, Any]:
    """Merge defaults, the config file's `[section]` and the flags into one dict."""
    table: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        path: Path = args.config
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        raw = document.get(section, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"[{section}] in {path} must be a table")
        known = {option.key for option in options}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"unknown key(s) in [{section}] of {path}: {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        table = raw
    merged: dict[str, Any] = {}
    for option in options:
        value = getattr(args, option.key, None)
        if option.secret:
            value = os.environ.get(option.environment) or None
        if value is None and option.key in table:
            value = _from_toml(option, table[option.key], section)
        if value is None:
            value = list(option.default) if isinstance(option.default, list) else option.default
        merged[option.key] = value
    return merged


def _from_toml(option: Option, value: Any, section: str) -> Any:
    where = f"[{section}] {option.key}"
    try:
        if option.is_switch:
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false")
            return value
        if option.repeat:
            items = value if isinstance(value, list) else [value]
            return [option.type(str(item)) for item in items]
        if isinstance(value, list | dict):
            raise ConfigError(f"{where} must be a single value, not a list or table")
        return option.type(str(value))
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _refuse_secret(option: Option) -> Callable[[str], Any]:
    def refuse(text: str) -> Any:
        raise argparse.ArgumentTypeError(
            f"a secret does not go on a command line, where every user of this machine can "
            f"read it: set `{option.key}` in the --config file or the environment variable "
            f"{option.environment}"
        )

    return refuse


def host_port(text: str) -> tuple[str, int]:
    """Parse HOST:PORT (IPv6 as [::1]:PORT) for a listening address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"{text!r}: write an IPv6 address as [ADDRESS]:PORT")
    host = host or "127.0.0.1"
    number = int(port)
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port {number} is out of range")
    return host, number


def url(text: str) -> str:
    if not text.startswith(("http://", "https://", "ws://", "wss://")):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s):// or ws(s):// URL")
    return text


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value
