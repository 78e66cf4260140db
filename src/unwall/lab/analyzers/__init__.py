"""The box's protocol classifiers: one small sans-IO analyzer per protocol.

Each analyzer is fed the transport payload of a flow's first packets and returns
`Finding`s, e.g. `Finding("tls", "sni", "news.example")`. `analyzers_for` picks the
analyzers a new flow gets (the box adds `CarrierAnalyzer` to UDP flows, and the FET one to
TCP flows, when a rule of its profile needs them). Nothing here touches a socket or a clock.
"""

from .analyzer import Analyzer, Finding, FlowAnalyzer
from .carrier import CarrierAnalyzer
from .catalog import analyzers_for
from .clienthello import ClientHello, parse_client_hello
from .dns import DnsAnalyzer, forge_response
from .dtls import DtlsAnalyzer
from .fet import FullyEncryptedAnalyzer
from .http import HttpAnalyzer
from .quic import QuicInitialAnalyzer
from .reassembly import MAX_BUFFER
from .stun import StunAnalyzer
from .tls import TlsAnalyzer

__all__ = [
    "MAX_BUFFER",
    "Analyzer",
    "CarrierAnalyzer",
    "ClientHello",
    "DnsAnalyzer",
    "DtlsAnalyzer",
    "Finding",
    "FlowAnalyzer",
    "FullyEncryptedAnalyzer",
    "HttpAnalyzer",
    "QuicInitialAnalyzer",
    "StunAnalyzer",
    "TlsAnalyzer",
    "analyzers_for",
    "forge_response",
    "parse_client_hello",
]
