"""Which analyzers a new flow gets."""

from __future__ import annotations

from typing import Literal

from .analyzer import Analyzer
from .dns import DnsAnalyzer
from .dtls import DtlsAnalyzer
from .http import HttpAnalyzer
from .quic import QuicInitialAnalyzer
from .stun import StunAnalyzer
from .tls import TlsAnalyzer

DNS_PORT = 53


def analyzers_for(protocol: Literal["tcp", "udp"], dst_port: int, src_port: int) -> list[Analyzer]:
    """Fresh analyzers for one new flow, to be fed its first packets.

    Detection is by content, not by port: TLS on port 8443 is still TLS, and each
    analyzer gives up within a byte or two of a flow that is not its protocol. The one
    exception is DNS over TCP, whose length prefix says nothing on its own; it is tried on
    port 53 only (DNS over UDP is recognized by a strict header check on any port).
    """
    if protocol == "tcp":
        found: list[Analyzer] = [TlsAnalyzer(), HttpAnalyzer()]
        if DNS_PORT in (dst_port, src_port):
            found.append(DnsAnalyzer(transport="tcp"))
        return found
    if protocol == "udp":
        return [DnsAnalyzer(transport="udp"), QuicInitialAnalyzer(), StunAnalyzer(), DtlsAnalyzer()]
    raise ValueError(f"analyzers exist for 'tcp' and 'udp' flows, not {protocol!r}")
