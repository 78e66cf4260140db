"""A packet capture on the box's interfaces, for the privacy audit (raw AF_PACKET sockets).

`python -m unwall.lab.capture OUT IFACE...` (run inside the box namespace) appends every
frame seen on those interfaces to OUT, length-prefixed, until it gets SIGTERM. What a
censor could have recorded is then searched for names and addresses that must not be there.
"""

from __future__ import annotations

import select
import signal
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

ETH_P_ALL = 0x0003


def capture(out: Path, interfaces: list[str]) -> None:
    sockets = []
    for name in interfaces:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((name, 0))
        sockets.append(sock)
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    with out.open("wb") as handle:
        handle.write(b"")
        handle.flush()
        Path(str(out) + ".ready").write_text("ok")
        while running:
            readable, _, _ = select.select(sockets, [], [], 0.2)
            for sock in readable:
                frame = sock.recv(65535)
                handle.write(struct.pack("!I", len(frame)) + frame)
            handle.flush()


def frames(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    offset = 0
    while offset + 4 <= len(data):
        (length,) = struct.unpack_from("!I", data, offset)
        yield data[offset + 4 : offset + 4 + length]
        offset += 4 + length


if __name__ == "__main__":
    capture(Path(sys.argv[1]), sys.argv[2:])
