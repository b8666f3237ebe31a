#!/usr/bin/env python3
"""An open-loop HTTP/1.1 load for weft's fault tests: requests leave at a fixed rate
whatever the answers do, so a fault shows up as failed requests, never as a
slower client that sent fewer of them.

  faultload URL RATE SECONDS MODE [FIRST_ID]
      MODE: keepalive (a pool of reused connections, as an app's HTTP client keeps)
            or new (a new connection per request)

Every other request is a POST (a 100-byte body), the rest GETs; each carries
`x-req-id: N` (N counts from FIRST_ID, default 0) so the servers' logs (httpkit.py serve ... LOGFILE) tell which
requests the application received. The load is bounded: RATE x SECONDS requests,
each with a 10 s timeout, and it stops by itself.

Prints one JSON line:
  {"sent": N, "succeeded": N, "failed": N, "statuses": {...},
   "failures": [{"id": N, "method": M, "status": S | "error": E, "weft_error": R}]}
A request succeeds when it gets a response below 500.
"""
import http.client
import json
import queue
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

TIMEOUT_S = 10
WORKERS = 64


def main():
    url, rate, seconds, mode = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    first_id = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    if mode not in ("keepalive", "new"):
        sys.exit(f"unknown mode {mode}: keepalive or new")
    u = urlsplit(url)
    host, port, path = u.hostname, u.port or 80, u.path or "/"
    idle = queue.LifoQueue()
    lock = threading.Lock()
    statuses, failures = Counter(), []

    def connection():
        if mode == "keepalive":
            try:
                return idle.get_nowait()
            except queue.Empty:
                pass
        return http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)

    def one(i):
        method = "POST" if i % 2 else "GET"
        body = b"x" * 100 if method == "POST" else None
        conn = connection()
        try:
            conn.request(method, path, body=body, headers={"x-req-id": str(i)})
            r = conn.getresponse()
            r.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            with lock:
                failures.append({"id": i, "method": method, "error": type(e).__name__})
            return
        keep = mode == "keepalive" and not r.will_close
        if keep:
            idle.put(conn)
        else:
            conn.close()
        with lock:
            statuses[r.status] += 1
            if r.status >= 500:
                failures.append({
                    "id": i,
                    "method": method,
                    "status": r.status,
                    "weft_error": r.getheader("x-weft-error"),
                })

    total = int(rate * seconds)
    start = time.monotonic() + 0.05
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for i in range(total):
            pause = start + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            pool.submit(one, first_id + i)
    while True:
        try:
            idle.get_nowait().close()
        except queue.Empty:
            break
    failures.sort(key=lambda f: f["id"])
    print(json.dumps({
        "sent": total,
        "succeeded": total - len(failures),
        "failed": len(failures),
        "statuses": statuses,
        "failures": failures,
    }))


if __name__ == "__main__":
    main()
