"""The aiortc engine behind `unwall.transport.webrtc`: the one place that configures
aiortc/aioice for unwall, one module per concern:

- `engine`: `AiortcEngine` and `AiortcPeer` (what the seam uses), the configuration every
  peer connection is made with, and `install_patches`, which applies all the patches below;
- `ice`: the host addresses ICE offers, mDNS queries, peers known only by mDNS names,
  consent freshness, connectivity checks shaped as a browser's;
- `turn`: never relaying to a peer's private host address;
- `sctp`: acknowledgements that cost little, and SCTP as a datagram pipe;
- `dtls`: DTLS 1.3 shaped as Chromium's (where cryptography's OpenSSL has it), the
  certificate and the SRTP profiles offered, as a browser's; `dtlswire` (sans-IO): the
  records on the wire, and the rewrites two unwall ends agree on in the SDP;
- `sdp`: what the SDP shows (no private host address unless asked for), and the line by
  which two unwall ends agree to rewrite DTLS between them.

Importing these modules changes nothing in aiortc or aioice: each patches only when its
`install()` is called, which `engine.install_patches()` does once, before the first peer
connection, after every module's `check()` has found the private internals it replaces or
calls (`unwall.transport.internals`: another release of aiortc or aioice fails there, with
a message, and not in the middle of a connection).

Two rules hold everywhere:
- ICE servers are always explicit. aiortc falls back to a public STUN server when given
  none (`iceServers=None`); unwall passes a list, empty by default, so nothing outside the
  operator's configuration is ever contacted.
- The host addresses ICE offers can be pinned (`set_host_addresses`). aioice skips
  loopback when it gathers host candidates, and would otherwise offer this machine's
  external interface; the demo and the tests keep all traffic on 127.0.0.1 this way, and
  the lab uses it to name a namespace's address. Pinned addresses also carry the mDNS
  queries that resolve a browser's `<uuid>.local` candidates.
- Without pins, private host addresses (RFC 1918, CGNAT, link-local, ULA) are left out of
  the SDP unless asked for (`unwall.transport.hostcandidates`), as browsers and Snowflake
  do: they would tell the broker and every peer which network the user is on.

A peer whose candidates are all mDNS names we cannot resolve (every browser at its default
settings, seen from across the internet) is still reached: we wait for its connectivity
checks and answer from the peer-reflexive candidates they reveal (see `ice`).
Our relay never sends to a peer's private host address either: coturn deletes the whole
allocation when a relayed send fails (see `turn`).
"""
