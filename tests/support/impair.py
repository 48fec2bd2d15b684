"""netem's loss, delay and reordering for kernels without `sch_netem` (this machine's has
none: CONFIG_NET_SCH_NETEM is unset), as a program on an NFQUEUE: iptables hands it each
packet, it drops one with probability `loss`, lets one through at once with probability
`reorder` (overtaking the others, as netem's `reorder`) and holds every other one for `delay`
seconds. Stdlib only: the nfnetlink_queue protocol over a netlink socket.

    python -m tests.support.impair QUEUE DELAY LOSS REORDER   # e.g. 0 0.1 0.05 0

Run it in a namespace with `iptables ... -j NFQUEUE --queue-num QUEUE --queue-bypass` rules
there; SIGTERM lets every held packet through, then exits. Prints "ready" once bound.
"""

from __future__ import annotations

import heapq
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK, NETLINK_NO_ENOBUFS = 270, 5
QUEUE_SUBSYS = 3 << 8  # NFNL_SUBSYS_QUEUE
MSG_PACKET, MSG_VERDICT, MSG_CONFIG = 0, 1, 2
NLM_F_REQUEST, NLMSG_ERROR = 1, 2
CFG_CMD, CFG_PARAMS, CFG_QUEUE_MAXLEN, CFG_MASK, CFG_FLAGS = 1, 2, 3, 4, 5
CMD_BIND, COPY_META, F_FAIL_OPEN = 1, 1, 1
PACKET_HDR, VERDICT_HDR = 1, 2
NF_DROP, NF_ACCEPT = 0, 1


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _message(msg: int, queue: int, attrs: bytes) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), QUEUE_SUBSYS | msg, NLM_F_REQUEST, 0, 0) + body


def _packet_ids(data: bytes) -> list[int]:
    """The ids of the queued packets in one netlink read."""
    ids, at = [], 0
    while at + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, at)
        if kind == NLMSG_ERROR and struct.unpack_from("=i", data, at + 16)[0] != 0:
            raise OSError(f"nfnetlink_queue: error {struct.unpack_from('=i', data, at + 16)[0]}")
        if kind == QUEUE_SUBSYS | MSG_PACKET:
            a = at + 20  # nlmsghdr + nfgenmsg
            while a + 4 <= at + length:
                alen, akind = struct.unpack_from("=HH", data, a)
                if akind & 0x7FFF == PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, a + 4)[0])
                a += max(4, alen + (-alen % 4))
        at += max(16, length + (-length % 4))
    return ids


def serve(queue: int, delay: float, loss: float, reorder: float) -> None:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((0, 0))
    sock.send(_message(MSG_CONFIG, queue, _attr(CFG_CMD, struct.pack("!BxH", CMD_BIND, 0))))
    sock.send(_message(MSG_CONFIG, queue, _attr(CFG_PARAMS, struct.pack("!IB", 0, COPY_META))
                       + _attr(CFG_QUEUE_MAXLEN, struct.pack("!I", 16384))
                       + _attr(CFG_MASK, struct.pack("!I", F_FAIL_OPEN))
                       + _attr(CFG_FLAGS, struct.pack("!I", F_FAIL_OPEN))))
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    held: list[tuple[float, int]] = []
    rng = random.Random()

    def verdict(packet: int, what: int) -> None:
        sock.send(_message(MSG_VERDICT, queue,
                           _attr(VERDICT_HDR, struct.pack("!II", what, packet))))

    print("ready", flush=True)
    while not stopping or held:
        wait = max(0.0, held[0][0] - time.monotonic()) if held else 0.5
        readable, _, _ = select.select([sock], [], [], 0.0 if stopping else wait)
        if readable:
            for packet in _packet_ids(sock.recv(1 << 20)):
                draw = rng.random()
                if draw < loss:
                    verdict(packet, NF_DROP)
                elif draw < loss + reorder:
                    verdict(packet, NF_ACCEPT)
                else:
                    heapq.heappush(held, (time.monotonic() + delay, packet))
        now = time.monotonic()
        while held and (stopping or held[0][0] <= now):
            verdict(heapq.heappop(held)[1], NF_ACCEPT)


if __name__ == "__main__":
    queue, delay, loss, reorder = sys.argv[1:5]
    serve(int(queue), float(delay), float(loss), float(reorder))
