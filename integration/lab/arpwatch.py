"""Listen for ARP frames on a lab host's interface, to see gratuitous ARP arrive.

A raw ``AF_PACKET`` socket is opened inside the host's namespace (it stays
there) and a daemon thread keeps every ARP frame with its arrival instant.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass

from dbvip.adapters.arp import call_in_netns

ETH_P_ARP = 0x0806


@dataclass(frozen=True)
class ArpFrame:
    at_s: float
    op: int  # 1 request, 2 reply
    sender_mac: bytes
    sender_ip: ipaddress.IPv4Address
    target_ip: ipaddress.IPv4Address

    @property
    def gratuitous(self) -> bool:
        """Announces the sender's own address (RFC 5227 announcement, either form)."""
        return self.sender_ip == self.target_ip


def parse(frame: bytes, at_s: float) -> ArpFrame | None:
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
        return None
    op = struct.unpack("!H", frame[20:22])[0]
    return ArpFrame(
        at_s,
        op,
        frame[22:28],
        ipaddress.IPv4Address(frame[28:32]),
        ipaddress.IPv4Address(frame[38:42]),
    )


class ArpWatch:
    def __init__(self, netns: str, ifname: str = "eth0") -> None:
        def open_socket() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
            sock.bind((ifname, ETH_P_ARP))
            return sock

        self._sock = call_in_netns(netns, open_socket)
        self._frames: list[ArpFrame] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"arpwatch-{netns}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            data = self._sock.recv(2048)
            frame = parse(data, time.monotonic())
            if frame is not None:
                with self._lock:
                    self._frames.append(frame)

    def frames(self) -> list[ArpFrame]:
        with self._lock:
            return list(self._frames)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with contextlib.suppress(OSError):
            self._sock.close()
