#!/usr/bin/env python3
"""Tiny UDP multicast/unicast sender and receiver used to prove the netns topology
independently of discd.  Run inside a namespace with `ip netns exec`.

  mcast.py recv GROUP_OR_ADDR PORT IFNAME SECONDS [N] prints "RX <src> <payload>" per datagram
                                                      (stops after N datagrams if N given)
  mcast.py hold ADDR PORT IFNAME SECONDS              binds ADDR:PORT without SO_REUSEADDR
  mcast.py relay GROUP PORT IF1 IF2 SECONDS MAX       naive IPv4 relay between IF1 and IF2 (no dedup:
                                                      two of them make a loop; bounded by SECONDS/MAX)
  mcast.py send DEST PORT IFNAME COUNT INTERVAL TTL TAG sends "<TAG> <seq>" datagrams
  mcast.py capture GROUP_OR_ADDR PORT IFNAME SECONDS  like recv, but prints "RXHEX <src> <hex bytes>"
                                                      (an eavesdropper's capture, for replay tests)
  mcast.py replay DEST PORT IFNAME FILE               sends the hex datagram of every "RXHEX" line of
                                                      FILE to DEST:PORT, as captured
  mcast.py flood DEST PORT IFNAME SECONDS FILE [ADDR:PORT ...]
                                                      sends as fast as it can for SECONDS to DEST:PORT
                                                      and every extra ADDR:PORT in turn: random bytes,
                                                      FILE's captured datagrams verbatim (replays),
                                                      with one byte flipped (forgeries) and truncated;
                                                      prints one JSON line of counts by kind

GROUP_OR_ADDR may be an IPv4/IPv6 multicast group (joined on IFNAME) or a unicast
address / '0.0.0.0' / '::' to bind.  Every loop is bounded by SECONDS or COUNT.
"""
import ipaddress
import json
import os
import random
import socket
import struct
import sys
import time

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; missing from some Python builds


def main():
    mode = sys.argv[1]
    addr, port, ifname = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    ip = ipaddress.ip_address(addr)
    v6 = ip.version == 6
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    ifindex = socket.if_nametoindex(ifname)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if mode in ("recv", "capture"):
        seconds = float(sys.argv[5])
        want = int(sys.argv[6]) if len(sys.argv) > 6 else 0
        got = 0
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if ip.is_multicast:
            if v6:
                s.bind(("::", port))
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, ip.packed + struct.pack("@I", ifindex))
            else:
                s.bind((addr, port))
                mreqn = ip.packed + socket.inet_aton("0.0.0.0") + struct.pack("@i", ifindex)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        else:
            s.bind((addr, port))
        print("READY", flush=True)
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data, src = s.recvfrom(65535)
            except socket.timeout:
                break
            if mode == "capture":
                print("RXHEX %s %s" % (src[0], data.hex()), flush=True)
            else:
                print("RX %s %s" % (src[0], data.decode(errors="replace")), flush=True)
            got += 1
            if want and got >= want:
                break
        print("DONE", flush=True)
    elif mode == "replay":
        if ip.is_multicast:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                         socket.inet_aton("0.0.0.0") + socket.inet_aton("0.0.0.0") + struct.pack("@i", ifindex))
        sent = 0
        with open(sys.argv[5]) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "RXHEX":
                    s.sendto(bytes.fromhex(parts[2]), (addr, port))
                    sent += 1
                    time.sleep(0.002)
        print("SENT %d" % sent, flush=True)
    elif mode == "hold":
        # occupy ADDR:PORT exclusively (no SO_REUSEADDR/SO_REUSEPORT) for SECONDS
        seconds = float(sys.argv[5])
        s.bind((addr, port))
        print("READY", flush=True)
        time.sleep(seconds)
    elif mode == "relay":
        # NAIVE relay (no duplicate suppression, for proving the loop check): every datagram to
        # GROUP:PORT arriving on IFNAME or IFNAME2 is re-sent on the other one.  Bounded by
        # SECONDS and by MAXCOUNT relayed datagrams.
        ifname2, seconds, maxcount = sys.argv[5], float(sys.argv[6]), int(sys.argv[7])
        idx = [ifindex, socket.if_nametoindex(ifname2)]
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        for i in idx:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                         ip.packed + socket.inet_aton("0.0.0.0") + struct.pack("@i", i))
        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        print("READY", flush=True)
        end, relayed = time.monotonic() + seconds, 0
        while relayed < maxcount:
            left = end - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data, anc, _, src = s.recvmsg(65535, 256)
            except socket.timeout:
                break
            arrived = None
            for lvl, typ, val in anc:
                if lvl == socket.IPPROTO_IP and typ == IP_PKTINFO:
                    arrived = struct.unpack("@i", val[:4])[0]
            if arrived not in idx:
                continue
            out = idx[1] if arrived == idx[0] else idx[0]
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                         socket.inet_aton("0.0.0.0") + socket.inet_aton("0.0.0.0") + struct.pack("@i", out))
            s.sendto(data, (addr, port))
            relayed += 1
        print("RELAYED %d" % relayed, flush=True)
    elif mode == "send":
        count, interval, ttl, tag = int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
        if ip.is_multicast:
            if v6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            else:
                mreqn = socket.inet_aton("0.0.0.0") + socket.inet_aton("0.0.0.0") + struct.pack("@i", ifindex)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        for seq in range(count):
            s.sendto(("%s %d" % (tag, seq)).encode(), (addr, port))
            time.sleep(interval)
        print("SENT %d" % count, flush=True)
    elif mode == "flood":
        seconds, capfile = float(sys.argv[5]), sys.argv[6]
        dests = [(addr, port)] + [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in sys.argv[7:]]
        if ip.is_multicast:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                         socket.inet_aton("0.0.0.0") + socket.inet_aton("0.0.0.0") + struct.pack("@i", ifindex))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        s.setblocking(False)
        captured = []
        if capfile != "-":
            with open(capfile) as f:
                captured = [bytes.fromhex(p[2]) for p in (l.split() for l in f) if len(p) == 3 and p[0] == "RXHEX"]
        rng = random.Random(int.from_bytes(os.urandom(8), "little"))
        # A pool of prepared datagrams (building one per send would halve the rate).
        pool = []
        for i in range(4096):
            kind = ("garbage", "replayed", "flipped", "truncated")[i % 4] if captured else "garbage"
            if kind == "garbage":
                d = os.urandom(rng.randrange(0, 1400))
            else:
                d = bytearray(rng.choice(captured))
                if kind == "flipped":
                    d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
                elif kind == "truncated":
                    d = d[:rng.randrange(len(d))]
                d = bytes(d)
            pool.append((kind, d))
        counts = {k: 0 for k in ("garbage", "replayed", "flipped", "truncated")}
        sent = blocked = 0
        end = time.monotonic() + seconds
        i = 0
        while True:
            if i % 256 == 0 and time.monotonic() >= end:
                break
            kind, d = pool[i % len(pool)]
            try:
                s.sendto(d, dests[i % len(dests)])
                counts[kind] += 1
                sent += 1
            except (BlockingIOError, OSError):
                blocked += 1
            i += 1
        print(json.dumps({"sent": sent, "blocked": blocked, "seconds": seconds, "by_kind": counts}), flush=True)
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
