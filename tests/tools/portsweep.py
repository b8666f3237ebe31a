#!/usr/bin/env python3
"""Many short connections, each from a source port of its own, for telemetry tests.

    portsweep.py BASE_PORT PLAN
        PLAN is a file of lines, run in order; line i binds source port BASE_PORT + i
        (so no two connections share a source port), connects, and closes:
          http HOST PORT PATH   one GET (Connection: close), read to EOF
          tcp HOST PORT         send one line, half-close, read to EOF
        Prints one JSON object: {"http": {"<status>": n, ...}, "tcp_echoed": n,
        "tcp_failed": n, "http_failed": n, "ports": <distinct source ports used>}.

Knows nothing about weft: an unmodified client whose connections a sidecar captures.
"""
import json
import socket
import sys
from collections import Counter


def dial(host, port, src_port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(10)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", src_port))
    s.connect((host, port))
    return s


def read_to_eof(s):
    parts = []
    while True:
        b = s.recv(65536)
        if not b:
            return b"".join(parts)
        parts.append(b)


def main(base, plan):
    statuses = Counter()
    tcp_echoed = tcp_failed = http_failed = 0
    ports = set()
    with open(plan) as f:
        lines = [l.split() for l in f if l.strip()]
    for i, words in enumerate(lines):
        src = base + i
        ports.add(src)
        kind, host, port = words[0], words[1], int(words[2])
        try:
            s = dial(host, port, src)
            with s:
                if kind == "http":
                    req = f"GET {words[3]} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                    s.sendall(req.encode())
                    head = read_to_eof(s).split(b"\r\n", 1)[0].split()
                    statuses[head[1].decode() if len(head) > 1 else "none"] += 1
                else:
                    line = f"conn {i}\n".encode()
                    s.sendall(line)
                    s.shutdown(socket.SHUT_WR)
                    if read_to_eof(s) == line:
                        tcp_echoed += 1
                    else:
                        tcp_failed += 1
        except OSError:
            if kind == "http":
                http_failed += 1
            else:
                tcp_failed += 1
    print(json.dumps({
        "http": dict(statuses),
        "tcp_echoed": tcp_echoed,
        "tcp_failed": tcp_failed,
        "http_failed": http_failed,
        "ports": len(ports),
    }), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
