#!/usr/bin/env python3
"""A small fake Kubernetes API server for weft's tier-2 tests: it serves recorded
Service and EndpointSlice lists to a real weft-controller (`--kubernetes`, with a
kubeconfig whose `server:` is `http://127.0.0.1:PORT`, like `kubectl proxy`) and
streams the watch events the test drives. Plain HTTP on loopback only: it runs in
the mesh's node namespace, next to the controller.

  fakekube PORT SERVICES_JSON SLICES_JSON [LIFETIME_S]

SERVICES_JSON / SLICES_JSON: a ServiceList and an EndpointSliceList as a 1.30 API
server returns them (`GET /api/v1/services`, `GET /apis/discovery.k8s.io/v1/
endpointslices`).

  GET  /api/v1/services, /apis/discovery.k8s.io/v1/endpointslices
       the list, at the current resourceVersion; with `watch=true`: the events
       after `resourceVersion`, then each new one as it happens, one JSON object
       a line in a chunked answer, until `timeoutSeconds` (at most 60 s) passes.
  PUT  /fake/endpointslices   (body: an EndpointSlice)
       what a write through the API does: the object stored (by namespace/name)
       at the next resourceVersion, and ADDED or MODIFIED sent to every slice
       watch. Answers {"resourceVersion": "N"}.
  DELETE /fake/endpointslices/NAMESPACE/NAME: removed, DELETED sent.

Bounded: it exits by itself after LIFETIME_S (default 300) seconds. Prints
"listening" once it accepts connections, and one line per request.
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_WATCH_S = 60

KINDS = {
    "/api/v1/services": "services",
    "/apis/discovery.k8s.io/v1/endpointslices": "slices",
}


class Store:
    """Objects per kind, and every event since the start (the tests are short)."""

    def __init__(self, services, slices):
        self.cond = threading.Condition()
        self.lists = {"services": services, "slices": slices}
        self.objects = {"services": {}, "slices": {}}
        self.events = []  # (rv, kind, type, object)
        self.rv = 0
        for kind, lst in self.lists.items():
            self.rv = max(self.rv, int(lst["metadata"].get("resourceVersion") or 0))
            for item in lst["items"]:
                self.objects[kind][key(item)] = item
                rv = int(item["metadata"].get("resourceVersion") or 0)
                self.rv = max(self.rv, rv)

    def listed(self, kind):
        with self.cond:
            out = dict(self.lists[kind])
            out["metadata"] = dict(out.get("metadata") or {}, resourceVersion=str(self.rv))
            out["items"] = list(self.objects[kind].values())
            return out

    def write(self, kind, obj, deleted=False):
        with self.cond:
            self.rv += 1
            obj = json.loads(json.dumps(obj))
            obj["metadata"]["resourceVersion"] = str(self.rv)
            k = key(obj)
            if deleted:
                kind_type = "DELETED"
                self.objects[kind].pop(k, None)
            else:
                kind_type = "MODIFIED" if k in self.objects[kind] else "ADDED"
                self.objects[kind][k] = obj
            self.events.append((self.rv, kind, kind_type, obj))
            self.cond.notify_all()
            return self.rv

    def wait_events(self, kind, after, deadline):
        """The events of `kind` after resourceVersion `after`, waiting for one
        until `deadline`; [] when none came."""
        with self.cond:
            while True:
                found = [e for e in self.events if e[1] == kind and e[0] > after]
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                self.cond.wait(left)


def key(obj):
    m = obj["metadata"]
    return (m.get("namespace", ""), m["name"])


def handler(store):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            print(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else ''}", flush=True)

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            u = urlsplit(self.path)
            kind = KINDS.get(u.path)
            if kind is None:
                return self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "reason": "NotFound", "code": 404})
            q = {k: v[-1] for k, v in parse_qs(u.query).items()}
            if q.get("watch") not in ("true", "1"):
                return self.reply(200, store.listed(kind))
            self.watch(kind, int(q.get("resourceVersion") or 0),
                       min(int(q.get("timeoutSeconds") or MAX_WATCH_S), MAX_WATCH_S))

        def watch(self, kind, after, timeout_s):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            deadline = time.monotonic() + timeout_s
            try:
                while time.monotonic() < deadline:
                    for rv, _, kind_type, obj in store.wait_events(kind, after, deadline):
                        line = (json.dumps({"type": kind_type, "object": obj}) + "\n").encode()
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                        self.wfile.flush()
                        print(f"watch {kind}: {kind_type} {obj['metadata']['name']} rv {rv}", flush=True)
                        after = rv
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def do_PUT(self):
            if urlsplit(self.path).path != "/fake/endpointslices":
                return self.reply(404, {"error": "PUT /fake/endpointslices only"})
            length = int(self.headers.get("content-length") or 0)
            obj = json.loads(self.rfile.read(length))
            rv = store.write("slices", obj)
            self.reply(200, {"resourceVersion": str(rv)})

        def do_DELETE(self):
            parts = urlsplit(self.path).path.split("/")
            if parts[:3] != ["", "fake", "endpointslices"] or len(parts) != 5:
                return self.reply(404, {"error": "DELETE /fake/endpointslices/NS/NAME only"})
            obj = {"metadata": {"namespace": parts[3], "name": parts[4]}}
            with store.cond:
                obj = store.objects["slices"].get((parts[3], parts[4]), obj)
            rv = store.write("slices", obj, deleted=True)
            self.reply(200, {"resourceVersion": str(rv)})

    return Handler


def main():
    port, services_file, slices_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    lifetime = float(sys.argv[4]) if len(sys.argv) > 4 else 300.0
    with open(services_file) as f:
        services = json.load(f)
    with open(slices_file) as f:
        slices = json.load(f)
    store = Store(services, slices)
    server = ThreadingHTTPServer(("127.0.0.1", port), handler(store))
    server.daemon_threads = True

    def end():
        time.sleep(lifetime)
        print(f"lifetime of {lifetime} s over: exiting", flush=True)
        os._exit(0)

    threading.Thread(target=end, daemon=True).start()
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
