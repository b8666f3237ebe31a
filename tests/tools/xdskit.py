#!/usr/bin/env python3
"""gRPC apps for the proxyless xDS test (tests/tests/xds.rs), on grpcio alone.

No generated code: one unary method, `/weft.test.Who/Name`, whose request and
response are raw bytes (grpcio passes bytes through when a handler or a call has
no serializers).

  serve --name NAME --port PORT
      answers every call with NAME; prints `listening` once bound.
  client --target TARGET [--interval S] [--duration S]
      calls TARGET one call at a time, S apart, for at most `duration` seconds,
      and prints one line per call: `<start, unix seconds> ok <name>` or
      `<start> err <status code>`. With GRPC_XDS_BOOTSTRAP set and an `xds:///`
      target this is gRPC's own xDS client: no sidecar.
"""

import argparse
import sys
import time
from concurrent import futures

import grpc

METHOD = "/weft.test.Who/Name"


def serve(args):
    name = args.name.encode()

    def who(_request, _context):
        return name

    handler = grpc.method_handlers_generic_handler(
        "weft.test.Who", {"Name": grpc.unary_unary_rpc_method_handler(who)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{args.port}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


def client(args):
    channel = grpc.insecure_channel(args.target)
    call = channel.unary_unary(METHOD)
    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        started = time.time()
        try:
            name = call(b"", timeout=2).decode()
            print(f"{started:.6f} ok {name}", flush=True)
        except grpc.RpcError as e:
            print(f"{started:.6f} err {e.code().name}", flush=True)
        time.sleep(args.interval)
    channel.close()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--name", required=True)
    s.add_argument("--port", type=int, required=True)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--interval", type=float, default=0.01)
    c.add_argument("--duration", type=float, default=30.0)
    args = p.parse_args()
    {"serve": serve, "client": client}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
