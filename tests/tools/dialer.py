#!/usr/bin/env python3
"""Dials TCP connections for a test process that cannot dial from where it stands.

  dialer.py SOCKET_PATH

Listens on the Unix socket SOCKET_PATH; per connection to it, reads one request line
"HOST PORT TIMEOUT_SECONDS", connects to HOST:PORT and hands the connected socket
over with SCM_RIGHTS along with the line "ok", or answers "error MESSAGE".

Why: in eBPF mode weft captures the connections of the processes in a pod's cgroup,
and a cgroup holds processes, not threads — a test thread that only joined the pod's
network namespace is not captured. This helper runs inside the pod's cgroup, so the
sockets it makes are the pod's (connect4/connect6 rewrite them, sockops and sk_msg
see them), and the test process then uses them like any it had made itself.
"""
import os
import socket
import sys
import threading


def serve(conn):
    with conn:
        request = b""
        while not request.endswith(b"\n"):
            part = conn.recv(256)
            if not part:
                return
            request += part
        try:
            host, port, timeout = request.decode().split()
            s = socket.create_connection((host, int(port)), timeout=float(timeout))
        except (OSError, ValueError) as e:
            conn.sendall(f"error {e}\n".encode())
            return
        with s:
            s.settimeout(None)  # blocking again: the receiver expects a plain socket
            socket.send_fds(conn, [b"ok\n"], [s.fileno()])


def main(path):
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(64)
    print("listening", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1])
