#!/usr/bin/env python3
"""A status-code HTTP server and a measuring client, for telemetry tests.

    statusd.py serve PORT
        HTTP/1.1 (keep-alive) on 0.0.0.0:PORT. GET /status/<code>?delay_ms=<n>
        sleeps n ms, then answers <code> with the body "<code>\n".

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
    elif len(sys.argv) == 3 and sys.argv[1] == "client":
        client(sys.argv[2])
    else:
        sys.exit(__doc__)
