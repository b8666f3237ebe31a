#!/usr/bin/env python3
"""Plain HTTP applications for weft's end-to-end L7 tests.

They know nothing about weft: unmodified servers and clients (stdlib only). Results go
to stdout, one line (JSON where structured) that the test reads.

  serve PORT NAME [LOG]  HTTP/1.1 keep-alive server (a thread per connection); with
                         LOG, the x-req-id of every request is appended to that
                         file as it arrives (one line each, kept through a kill -9):
                           /status/N   answer status N
                           /sleep/MS   answer 200 after MS milliseconds
                           anything    answer 200 with body NAME (POST bodies are read)
                         control, from inside the pod over loopback (not counted):
                           /__mode/M   ok | flaky (every other request 503) |
                                       outage (every request 503) |
                                       hang (hold every request until the mode changes)
                           /__stats    {"total": N, "GET": N, "POST": N, ...}
  banner PORT TEXT       say TEXT to each client as soon as it connects, then echo
  get-many URL N         N GETs on one keep-alive connection; prints
                         {"bodies": {...}, "statuses": {...}, "connections": K}
  load URL RATE SECONDS CONNS [METHOD]
                         RATE requests/s for SECONDS over CONNS keep-alive
                         connections; prints {"statuses": {...}, "errors": N, "sent": N}
  slow-get URL MS        one GET whose answer takes MS ms (path /sleep/MS); prints
                         {"status": S, "connection": C, "seconds": T} or {"error": ...}
"""
import http.client
import json
import os
import socket
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    request_queue_size = 1024

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def serve(port, name, log=None):
    state = {"mode": "ok", "n": 0, "stats": Counter()}
    # O_APPEND: one write per line is atomic between the handler threads, and what
    # was written survives the process being killed.
    log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log else None
    lock = threading.Lock()
    changed = threading.Condition(lock)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, status, body):
            data = body.encode()
            self.send_response(status)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def handle_any(self):
            req_id = self.headers.get("x-req-id")
            if log_fd is not None and req_id is not None:
                os.write(log_fd, f"{req_id}\n".encode())
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            path = self.path.split("?", 1)[0]
            if path.startswith("/__mode/"):
                with lock:
                    state["mode"] = path[len("/__mode/"):]
                    changed.notify_all()
                return self.answer(200, state["mode"])
            if path == "/__stats":
                with lock:
                    return self.answer(200, json.dumps(state["stats"]))
            with lock:
                state["stats"]["total"] += 1
                state["stats"][self.command] += 1
                state["n"] += 1
                n = state["n"]
                mode = state["mode"]
                if mode == "hang":
                    deadline = time.monotonic() + 60
                    while state["mode"] == "hang" and time.monotonic() < deadline:
                        changed.wait(1)
            if mode == "outage" or (mode == "flaky" and n % 2 == 0):
                return self.answer(503, f"{name} {mode}")
            if path.startswith("/status/"):
                return self.answer(int(path[len("/status/"):]), name)
            if path.startswith("/sleep/"):
                time.sleep(int(path[len("/sleep/"):]) / 1000)
            return self.answer(200, name)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any

    server = DualStackServer(("::", port), Handler)
    print("listening", flush=True)
    server.serve_forever()


def banner(port, text):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(128)
    print("listening", flush=True)

    def handle(conn):
        with conn:
            conn.sendall((text + "\r\n").encode())
            while True:
                b = conn.recv(65536)
                if not b:
                    return
                conn.sendall(b)

    while True:
        conn, _ = s.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def connection(url):
    u = urlsplit(url)
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30), (u.path or "/")


def get_many(url, n):
    conn, path = connection(url)
    bodies, statuses, socks = Counter(), Counter(), set()
    for _ in range(n):
        conn.request("GET", path)
        socks.add(id(conn.sock))
        r = conn.getresponse()
        bodies[r.read().decode()] += 1
        statuses[r.status] += 1
    print(json.dumps({"bodies": bodies, "statuses": statuses, "connections": len(socks)}))


def load(url, rate, seconds, conns, method="GET"):
    statuses, errors, lock = Counter(), Counter(), threading.Lock()
    per_conn = rate / conns
    total_per_conn = int(per_conn * seconds)
    start = time.monotonic() + 0.05

    def worker(k):
        conn, path = connection(url)
        for i in range(total_per_conn):
            due = start + (i + k / conns) / per_conn
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            try:
                body = b"x" * 100 if method == "POST" else None
                conn.request(method, path, body=body)
                r = conn.getresponse()
                r.read()
                with lock:
                    statuses[r.status] += 1
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    errors[type(e).__name__] += 1
                conn.close()
                conn, path = connection(url)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({
        "statuses": statuses,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "sent": total_per_conn * conns,
    }))


def slow_get(url, ms):
    conn, _ = connection(url)
    t = time.monotonic()
    try:
        conn.request("GET", f"/sleep/{ms}")
        r = conn.getresponse()
        r.read()
        print(json.dumps({
            "status": r.status,
            "connection": r.getheader("connection"),
            "seconds": time.monotonic() - t,
        }))
    except (OSError, http.client.HTTPException) as e:
        print(json.dumps({"error": repr(e)}))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(int(args[0]), args[1], *args[2:3])
    elif cmd == "banner":
        banner(int(args[0]), args[1])
    elif cmd == "get-many":
        get_many(args[0], int(args[1]))
    elif cmd == "load":
        load(args[0], float(args[1]), float(args[2]), int(args[3]), *args[4:5])
    elif cmd == "slow-get":
        slow_get(args[0], int(args[1]))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
