#!/usr/bin/env python3
"""A small OTLP receiver (metrics and traces) for the OTLP export tests
(tests/tests/otlp.rs, tests/tests/traces.rs).

    otlpkit.py serve --grpc-port P --http-port Q --out FILE [--duration S]

Serves OTLP/gRPC (opentelemetry.proto.collector.{metrics,trace}.v1
MetricsService/Export and TraceService/Export, grpcio) on 0.0.0.0:P and OTLP/HTTP
with protobuf bodies (POST /v1/metrics and /v1/traces, a plain http.server) on
0.0.0.0:Q. Every export it receives is decoded with PyPI's opentelemetry-proto and
appended to FILE as one JSON object a line:

    {"signal": "metrics", "transport": "grpc" | "http", "headers": {name: value},
     "resources": [{"attributes": {key: value},
                    "metrics": [{"name": ..., "kind": "sum" | "gauge" | "histogram",
                                 "temporality": "cumulative" | "delta" | null,
                                 "points": [{"attributes": {...}, "value": n}]}]}]}

(a histogram point's value is its count), or for traces

    {"signal": "traces", "transport": ..., "headers": ...,
     "resources": [{"attributes": {key: value},
                    "spans": [{"trace_id": hex, "span_id": hex,
                               "parent_span_id": hex or "", "name": ...,
                               "kind": "server" | "client" | ..., "attributes": {...},
                               "status": "unset" | "ok" | "error",
                               "start_ns": n, "end_ns": n}]}]} Exits by itself after S seconds
(default 600): a test's receiver never outlives it for long.
"""
import argparse
import gzip
import http.server
import json
import sys
import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

_write_lock = threading.Lock()
_out = None


def any_value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(v, kind)
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes(v.kvlist_value.values)
    return repr(getattr(v, kind))


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


TEMPORALITY = {
    metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE: "cumulative",
    metrics_pb2.AGGREGATION_TEMPORALITY_DELTA: "delta",
}


def number(p):
    return p.as_int if p.WhichOneof("value") == "as_int" else p.as_double


def metric(m):
    kind = m.WhichOneof("data")
    data = getattr(m, kind)
    if kind in ("sum", "gauge"):
        points = [{"attributes": attributes(p.attributes), "value": number(p)} for p in data.data_points]
    elif kind in ("histogram", "exponential_histogram"):
        points = [{"attributes": attributes(p.attributes), "value": p.count, "sum": p.sum}
                  for p in data.data_points]
    else:
        points = []
    temporality = TEMPORALITY.get(getattr(data, "aggregation_temporality", None))
    return {"name": m.name, "kind": kind, "temporality": temporality, "points": points}


SPAN_KINDS = {
    trace_pb2.Span.SPAN_KIND_UNSPECIFIED: "unspecified",
    trace_pb2.Span.SPAN_KIND_INTERNAL: "internal",
    trace_pb2.Span.SPAN_KIND_SERVER: "server",
    trace_pb2.Span.SPAN_KIND_CLIENT: "client",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "producer",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "consumer",
}

STATUS_CODES = {
    trace_pb2.Status.STATUS_CODE_UNSET: "unset",
    trace_pb2.Status.STATUS_CODE_OK: "ok",
    trace_pb2.Status.STATUS_CODE_ERROR: "error",
}


def span(s):
    return {
        "trace_id": s.trace_id.hex(),
        "span_id": s.span_id.hex(),
        "parent_span_id": s.parent_span_id.hex(),
        "name": s.name,
        "kind": SPAN_KINDS.get(s.kind, str(s.kind)),
        "attributes": attributes(s.attributes),
        "status": STATUS_CODES.get(s.status.code, str(s.status.code)),
        "start_ns": s.start_time_unix_nano,
        "end_ns": s.end_time_unix_nano,
    }


def write(line):
    with _write_lock:
        _out.write(json.dumps(line) + "\n")
        _out.flush()


def record_traces(transport, headers, request):
    write({
        "signal": "traces",
        "transport": transport,
        "headers": headers,
        "resources": [
            {
                "attributes": attributes(rs.resource.attributes),
                "spans": [span(s) for ss in rs.scope_spans for s in ss.spans],
            }
            for rs in request.resource_spans
        ],
    })


def record(transport, headers, request):
    line = {
        "signal": "metrics",
        "transport": transport,
        "headers": headers,
        "resources": [
            {
                "attributes": attributes(rm.resource.attributes),
                "metrics": [metric(m) for sm in rm.scope_metrics for m in sm.metrics],
            }
            for rm in request.resource_metrics
        ],
    }
    write(line)


class MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def Export(self, request, context):
        headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        record("grpc", headers, request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        record_traces("grpc", headers, request)
        return trace_service_pb2.ExportTraceServiceResponse()


# path -> (request type, recorder, response type)
HTTP_SIGNALS = {
    "/v1/metrics": (
        metrics_service_pb2.ExportMetricsServiceRequest,
        record,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
    "/v1/traces": (
        trace_service_pb2.ExportTraceServiceRequest,
        record_traces,
        trace_service_pb2.ExportTraceServiceResponse,
    ),
}


class HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        if self.path not in HTTP_SIGNALS:
            self.reply(404, b"", "text/plain")
            return
        request_type, recorder, response_type = HTTP_SIGNALS[self.path]
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = request_type()
        try:
            request.ParseFromString(body)
        except Exception as e:  # a body that is no request: the exporter's bug
            self.reply(400, str(e).encode(), "text/plain")
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        recorder("http", headers, request)
        self.reply(200, response_type().SerializeToString(), "application/x-protobuf")

    def reply(self, code, body, content_type):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("http: " + (fmt % args) + "\n")


def serve(args):
    global _out
    _out = open(args.out, "a", encoding="utf-8")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsService(), server)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    server.add_insecure_port(f"0.0.0.0:{args.grpc_port}")
    server.start()
    httpd = http.server.ThreadingHTTPServer(("0.0.0.0", args.http_port), HttpHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print(f"listening grpc {args.grpc_port} http {args.http_port}", flush=True)
    time.sleep(args.duration)
    httpd.shutdown()
    server.stop(0)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--grpc-port", type=int, required=True)
    s.add_argument("--http-port", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--duration", type=float, default=600.0)
    args = parser.parse_args()
    serve(args)


if __name__ == "__main__":
    main()
