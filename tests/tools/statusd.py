#!/usr/bin/env python3
"""A status-code HTTP server and a measuring client, for telemetry tests.

    statusd.py serve PORT
        HTTP/1.1 (keep-alive) on 0.0.0.0:PORT. GET /status/<code>?delay_ms=<n>
        sleeps n ms, then answers <code> with the body "<code>\n".

    statusd.py relay PORT
        HTTP/1.1 on 0.0.0.0:PORT, an app that calls another service, as a frontend
        does: GET /call/<host>/<path> makes GET http://<host>/<path>, passing on the
        request's W3C trace headers (traceparent, tracestate) as an instrumented
        app would, and answers with the upstream's status and body.

    statusd.py client PLAN
        PLAN is a file of URLs, one a line. Requests each in order, each on a new
        connection, and prints one JSON object a line:
        {"url": ..., "status": <code>, "seconds": <connect to end of body>}.
"""
import http.client
import http.server
import json
import sys
import time
import urllib.parse


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "status" or not parts[1].isdigit():
            code = 400
        else:
            code = int(parts[1])
        delay = urllib.parse.parse_qs(url.query).get("delay_ms", ["0"])[0]
        time.sleep(int(delay) / 1000.0)
        body = f"{code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


TRACE_HEADERS = ("traceparent", "tracestate")


class Relay(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        parts = self.path.split("/", 3)
        if len(parts) < 4 or parts[1] != "call":
            self.answer(400, b"GET /call/<host>/<path>\n")
            return
        host, path = parts[2], "/" + parts[3]
        headers = {h: self.headers[h] for h in TRACE_HEADERS if self.headers.get(h)}
        try:
            conn = http.client.HTTPConnection(host, timeout=10)
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            self.answer(resp.status, body)
        except OSError as e:
            self.answer(502, f"relay: {e}\n".encode())

    def answer(self, code, body):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


def relay(port):
    http.server.ThreadingHTTPServer.daemon_threads = True
    http.server.ThreadingHTTPServer(("0.0.0.0", port), Relay).serve_forever()


def serve(port):
    http.server.ThreadingHTTPServer.daemon_threads = True
    http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


def client(plan):
    with open(plan) as f:
        urls = [line.strip() for line in f if line.strip()]
    for u in urls:
        url = urllib.parse.urlsplit(u)
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=30)
        path = url.path + ("?" + url.query if url.query else "")
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        seconds = time.perf_counter() - t0
        conn.close()
        print(json.dumps({"url": u, "status": resp.status, "seconds": seconds}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "relay":
        relay(int(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "client":
        client(sys.argv[2])
    else:
        sys.exit(__doc__)
