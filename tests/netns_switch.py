"""A learning Ethernet switch in user space that can lose, delay and block frames: the test lab's netem.

The CI kernel has neither ``sch_netem`` nor packet filters, so the lab's hub namespace runs this switch in
place of a bridge. It reads every frame from the hub ends of the hosts' veths (``AF_PACKET``), learns
which MAC sits behind which port, floods multicast (mDNS works as on a bridge) and forwards the rest,
after the impairments in force:

    {"loss": 0.05, "delay": 0.02, "jitter": 0.01}   every frame: dropped with p=loss, else held
                                                     delay ± jitter seconds (uniform; frames may reorder)
    {"block": [[0, 3], [3, 0]]}                      frames from host 0 to host 3 and back are dropped
                                                     (a pair is one direction: asymmetric cuts work)
    {"mute_multicast": [3]}                          multicast frames from and to host 3 are dropped
                                                     (unicast still flows: a firewall on mDNS)
    {"drop_tcp": [[4, 0, 7070]]}                     IPv4 TCP frames from host 4 to host 0's port 7070
                                                     are dropped (a firewalled port)

Commands are JSON lines on stdin; each is answered ``ok`` on stdout once in force. Frames keep their
virtio-net header (``PACKET_VNET_HDR``), so checksum offload and GSO pass through intact.

    ip netns exec HUB python netns_switch.py PORT0 PORT1 ...
"""

from __future__ import annotations

import heapq
import json
import os
import random
import selectors
import socket
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
VNET = 10  # struct virtio_net_hdr, ahead of every frame


class Switch:
    def __init__(self, ports: list[str]) -> None:
        self.socks: list[socket.socket] = []
        for name in ports:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            s.bind((name, 0))
            s.setblocking(False)
            self.socks.append(s)
        self.macs: dict[bytes, int] = {}
        self.loss = 0.0
        self.delay = 0.0
        self.jitter = 0.0
        self.blocked: set[tuple[int, int]] = set()
        self.muted: set[int] = set()
        self.drop_tcp: set[tuple[int, int, int]] = set()
        self.queue: list[tuple[float, int, int, bytes]] = []
        self.seq = 0
        self.rng = random.Random(int.from_bytes(os.urandom(8), "big"))

    def command(self, line: str) -> None:
        cmd = json.loads(line)
        if "block" in cmd:
            self.blocked = {(int(a), int(b)) for a, b in cmd["block"]}
        if "mute_multicast" in cmd:
            self.muted = {int(h) for h in cmd["mute_multicast"]}
        if "drop_tcp" in cmd:
            self.drop_tcp = {(int(a), int(b), int(p)) for a, b, p in cmd["drop_tcp"]}
        for key in ("loss", "delay", "jitter"):
            if key in cmd:
                setattr(self, key, float(cmd[key]))

    def receive(self, port: int) -> None:
        sock = self.socks[port]
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(1 << 18)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING or len(data) < VNET + 14:
                continue
            dst, src = data[VNET:VNET + 6], data[VNET + 6:VNET + 12]
            self.macs[src] = port
            out = self.macs.get(dst)
            targets = [out] if out is not None and not dst[0] & 1 else range(len(self.socks))
            for t in targets:
                if t != port:
                    self.forward(port, t, data)

    def filtered(self, src: int, dst: int, data: bytes) -> bool:
        mac = data[VNET:VNET + 3]
        ip_multicast = mac == b"\x01\x00\x5e" or mac[:2] == b"\x33\x33"  # not broadcast: ARP still works
        if self.muted and ip_multicast and (src in self.muted or dst in self.muted):
            return True
        if self.drop_tcp and data[VNET + 12:VNET + 14] == b"\x08\x00" and data[VNET + 23] == 6:
            ip = VNET + 14
            tcp = ip + (data[ip] & 0x0F) * 4
            port = int.from_bytes(data[tcp + 2:tcp + 4], "big")
            return (src, dst, port) in self.drop_tcp
        return False

    def forward(self, src: int, dst: int, data: bytes) -> None:
        if (src, dst) in self.blocked or (self.loss and self.rng.random() < self.loss):
            return
        if self.filtered(src, dst, data):
            return
        hold = max(0.0, self.delay + self.rng.uniform(-self.jitter, self.jitter)) if self.delay else 0.0
        if hold <= 0:
            self.send(dst, data)
            return
        self.seq += 1
        heapq.heappush(self.queue, (time.monotonic() + hold, self.seq, dst, data))

    def send(self, port: int, data: bytes) -> None:
        try:
            self.socks[port].send(data)
        except OSError:  # a port going away or a full queue: the frame is lost, as on a wire
            pass

    def flush(self) -> float | None:
        """Send every frame that is due; the seconds until the next one, or None."""
        now = time.monotonic()
        while self.queue and self.queue[0][0] <= now:
            _, _, port, data = heapq.heappop(self.queue)
            self.send(port, data)
        return max(0.0, self.queue[0][0] - now) if self.queue else None

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        for i, s in enumerate(self.socks):
            sel.register(s, selectors.EVENT_READ, i)
        sel.register(sys.stdin, selectors.EVENT_READ, -1)
        print("ready", flush=True)
        while True:
            for key, _ in sel.select(self.flush()):
                if key.data >= 0:
                    self.receive(key.data)
                    continue
                line = sys.stdin.readline()
                if not line:
                    return
                self.command(line)
                print("ok", flush=True)


if __name__ == "__main__":
    Switch(sys.argv[1:]).run()
