#!/usr/bin/env python3
"""Plain TCP applications for weft's end-to-end tests.

They know nothing about weft: they are the unmodified servers and clients a mesh must
carry faithfully. Each prints one result line on stdout that the test reads.

  serve-stream PORT BYTES      send BYTES deterministic bytes to each client, then close
  serve-sink PORT              read each client to EOF, print "received=N sha256=H"
  serve-reply-after-eof PORT   read to EOF, then reply "got N bytes" and close (half-close)
  serve-reset PORT             read a little, then close with RST (SO_LINGER 0)
  serve-echo PORT              echo everything until EOF (asyncio, many clients)
  fetch HOST PORT              read to EOF, print "received=N sha256=H"
  push HOST PORT BYTES         send BYTES deterministic bytes, shut down, wait for EOF
  read-expect-error HOST PORT  send a line, read until the connection ends; print
                               "reset", "eof", "timed-out" or "timeout" (10 s)
  echo-then-again HOST PORT GOFILE
                               send a line and read its echo (an echo server is the
                               peer), print "echoed", wait until GOFILE exists (20 s
                               at most), send another line, then read until the
                               connection ends; print as read-expect-error (30 s)
  echo-then-idle HOST PORT     send a line and read its echo, print "echoed", then
                               send nothing and read until the connection ends;
                               print as read-expect-error ("timed-out": the kernel
                               gave the peer up) (30 s)
  serve-no-accept PORT         listen with a backlog of 1 and never accept: the
                               kernel completes a couple of handshakes, then drops
                               SYNs (an application that fell behind)
  many HOST PORT N             hold N concurrent connections, echo one line on each,
                               print "completed=K"
  digest BYTES                 print "sha256=H" of the deterministic stream
  serve-zeros PORT BYTES       send BYTES zero bytes per client as fast as possible
  drain HOST PORT              read to EOF as fast as possible, print bytes, seconds, Gbit/s
  hold HOST PORT N SECONDS     open N connections, print "open=K", hold them SECONDS
  serve-hello PORT NAME        greet each client with "NAME\\n", then echo until EOF
                               (a thread per client), so a client learns who served it
  burst HOST PORT N WRITES [GAP_MS]
                               N connections (16 at a time); each sends WRITES numbered
                               records, one send() each (GAP_MS apart, default 0) from
                               the moment it is connected, half-closes and checks that
                               the echo is byte-identical; print "ok=K bad=M errors=E"
                               (an echo server is the peer)
  serve-trickle PORT CHUNK COUNT GAP_MS
                               for each client (a thread each): read one line, then
                               send COUNT chunks of CHUNK bytes GAP_MS apart, shut
                               down, read to EOF (a slow, long-lived download)
  ask HOST PORT TEXT           send TEXT and a newline, read to EOF; print
                               "sent=N received=M"
  serve-echo-log PORT LOGFILE  echo every client's bytes until EOF (asyncio, many
                               clients), appending the first line each sends (an
                               id) to LOGFILE once read, so a test knows which
                               connections an application received
  echo-load HOST PORT RATE SECONDS [FIRST_ID]
                               an open-loop load of short connections: RATE a second
                               for SECONDS whatever the answers do, each sending its
                               id (counting from FIRST_ID, default 0) and a newline
                               and expecting the line back, 10 s at most; prints one
                               JSON line {"sent", "succeeded", "failed",
                               "failures": [{"id", "port", "error"}]} (port: the
                               connection's local port, null if it never connected)
  blocking HOST PORT N         N connections, one after another, on plain blocking
                               sockets (no timeout): send a line, half-close, read the
                               echo to EOF; print "ok=K eagain=M errors=E" (EAGAIN from
                               a blocking read is a spurious wakeup surfacing)
"""
import time
import asyncio
import hashlib
import resource
import socket
import struct
import sys
import threading

CHUNK = 64 * 1024


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def stream_chunks(total):
    """A deterministic, incompressible-looking byte stream (a SHA-256 counter chain)."""
    block = b"".join(hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(CHUNK // 32))
    sent = 0
    n = 0
    while sent < total:
        # Vary each chunk so a misordered or duplicated chunk changes the digest.
        chunk = n.to_bytes(8, "big") + block[8:]
        take = min(len(chunk), total - sent)
        yield chunk[:take]
        sent += take
        n += 1


def digest(total):
    h = hashlib.sha256()
    for c in stream_chunks(total):
        h.update(c)
    return h.hexdigest()


def listener(port, backlog=1024):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(backlog)
    print("listening", flush=True)
    return s


def connect(host, port):
    return socket.create_connection((host, port), timeout=30)


def read_all(conn):
    h = hashlib.sha256()
    n = 0
    while True:
        b = conn.recv(CHUNK)
        if not b:
            return n, h.hexdigest()
        n += len(b)
        h.update(b)


def serve_forever(port, handle):
    s = listener(port)
    while True:
        conn, _ = s.accept()
        try:
            handle(conn)
        except OSError as e:
            print(f"error {e}", flush=True)
        finally:
            conn.close()


def serve_stream(port, total):
    def handle(conn):
        for c in stream_chunks(total):
            conn.sendall(c)
        conn.shutdown(socket.SHUT_WR)
        read_all(conn)
    serve_forever(port, handle)


def serve_sink(port):
    def handle(conn):
        n, h = read_all(conn)
        print(f"received={n} sha256={h}", flush=True)
    serve_forever(port, handle)


def serve_reply_after_eof(port):
    def handle(conn):
        n, _ = read_all(conn)
        conn.sendall(f"got {n} bytes\n".encode())
    serve_forever(port, handle)


def serve_reset(port):
    def handle(conn):
        conn.recv(16)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    serve_forever(port, handle)


def serve_echo(port):
    raise_nofile()

    async def handle(reader, writer):
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def main():
        # host=None: one socket per family (asyncio makes IPv6 sockets v6-only).
        server = await asyncio.start_server(handle, host=None, port=port, backlog=4096)
        print("listening", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def serve_echo_log(port, logfile):
    raise_nofile()
    log = open(logfile, "a", buffering=1)

    async def handle(reader, writer):
        try:
            first = await reader.readline()
            if first:
                log.write(first.decode(errors="replace").strip() + "\n")
                writer.write(first)
                await writer.drain()
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, host=None, port=port, backlog=4096)
        print("listening", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def echo_load(host, port, rate, seconds, first_id=0):
    import json
    from concurrent.futures import ThreadPoolExecutor
    raise_nofile()
    lock = threading.Lock()
    failures = []

    def one(i):
        line = f"{i}\n".encode()
        local_port = None
        try:
            with socket.create_connection((host, port), timeout=10) as conn:
                local_port = conn.getsockname()[1]
                conn.sendall(line)
                got = b""
                while not got.endswith(b"\n"):
                    b = conn.recv(64)
                    if not b:
                        raise ConnectionError(f"closed after {got!r}")
                    got += b
                if got != line:
                    raise ValueError(f"echoed {got!r}")
        except (OSError, ValueError) as e:
            with lock:
                # The local port names the connection in the sidecar's /connections.
                failures.append({"id": i, "port": local_port,
                                 "error": f"{type(e).__name__}: {e}"})

    total = int(rate * seconds)
    start = time.monotonic() + 0.05
    with ThreadPoolExecutor(max_workers=64) as pool:
        for k in range(total):
            pause = start + k / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            pool.submit(one, first_id + k)
    failures.sort(key=lambda f: f["id"])
    print(json.dumps({
        "sent": total,
        "succeeded": total - len(failures),
        "failed": len(failures),
        "failures": failures,
    }), flush=True)


def fetch(host, port):
    conn = connect(host, port)
    n, h = read_all(conn)
    print(f"received={n} sha256={h}", flush=True)


def push(host, port, total):
    conn = connect(host, port)
    for c in stream_chunks(total):
        conn.sendall(c)
    conn.shutdown(socket.SHUT_WR)
    read_all(conn)
    print(f"sent={total} sha256={digest(total)}", flush=True)


def print_how_it_ends(conn):
    """Reads until the connection ends; prints "eof", "reset", "timed-out" (the
    kernel gave the peer up: ETIMEDOUT) or "timeout" (the socket's own)."""
    try:
        while conn.recv(CHUNK):
            pass
        print("eof", flush=True)
    except ConnectionResetError:
        print("reset", flush=True)
    except TimeoutError as e:
        # socket.timeout is TimeoutError; ETIMEDOUT from the kernel is one too.
        print("timeout" if e.errno is None else "timed-out", flush=True)


def read_expect_error(host, port):
    conn = connect(host, port)
    conn.settimeout(10)
    conn.sendall(b"hello\n")
    print_how_it_ends(conn)


def serve_no_accept(port):
    _held = listener(port, backlog=1)
    while True:
        time.sleep(3600)


def echo_then_again(host, port, gofile):
    """gofile None: send nothing more (echo-then-idle)."""
    import os
    conn = connect(host, port)
    conn.settimeout(10)
    conn.sendall(b"one\n")
    got = b""
    while not got.endswith(b"\n"):
        b = conn.recv(64)
        if not b:
            raise SystemExit(f"closed after {got!r}")
        got += b
    print("echoed", flush=True)
    deadline = time.monotonic() + 20
    while gofile is not None and not os.path.exists(gofile):
        if time.monotonic() > deadline:
            raise SystemExit(f"no {gofile}")
        time.sleep(0.05)
    conn.settimeout(30)
    if gofile is not None:
        try:
            conn.sendall(b"two\n")
        except ConnectionResetError:
            print("reset", flush=True)
            return
    print_how_it_ends(conn)


def many(host, port, count):
    raise_nofile()

    async def open_one():
        return await asyncio.wait_for(asyncio.open_connection(host, port), 60)

    async def echo_one(i, conn):
        reader, writer = conn
        line = f"conn {i}\n".encode()
        writer.write(line)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(line)), 60)
        writer.close()
        return got == line

    async def main():
        # Phase 1 opens every connection; only then does any of them talk, so all
        # `count` are open through the mesh at the same time.
        conns = await asyncio.gather(*(open_one() for _ in range(count)), return_exceptions=True)
        opened = [(i, c) for i, c in enumerate(conns) if not isinstance(c, BaseException)]
        results = await asyncio.gather(*(echo_one(i, c) for i, c in opened), return_exceptions=True)
        errors = [r for r in list(conns) + list(results) if isinstance(r, BaseException)]
        for e in errors[:5]:
            print(f"error {e!r}", flush=True)
        print(f"completed={sum(1 for r in results if r is True)}", flush=True)

    asyncio.run(main())


BULK = 1 << 20


def serve_zeros(port, total):
    zeros = bytes(BULK)

    def handle(conn):
        left = total
        while left > 0:
            left -= conn.send(zeros[: min(BULK, left)])
        conn.shutdown(socket.SHUT_WR)
        read_all(conn)
    serve_forever(port, handle)


def drain(host, port):
    conn = connect(host, port)
    buf = bytearray(BULK)
    n = 0
    start = time.monotonic()
    while True:
        got = conn.recv_into(buf)
        if not got:
            break
        n += got
    secs = time.monotonic() - start
    print(f"bytes={n} seconds={secs:.3f} gbit_per_s={n * 8 / secs / 1e9:.2f}", flush=True)


def hold(host, port, count, seconds):
    raise_nofile()
    conns = []
    for _ in range(count):
        try:
            conns.append(socket.create_connection((host, port), timeout=10))
        except OSError as e:
            print(f"error {e}", flush=True)
            break
    print(f"open={len(conns)}", flush=True)
    time.sleep(seconds)


def serve_hello(port, name):
    greeting = f"{name}\n".encode()

    def handle(conn):
        with conn:
            try:
                conn.sendall(greeting)
                while data := conn.recv(CHUNK):
                    conn.sendall(data)
            except OSError as e:
                print(f"error {e}", flush=True)

    s = listener(port)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def burst(host, port, count, writes, gap_ms=0.0):
    from concurrent.futures import ThreadPoolExecutor
    raise_nofile()

    def one(i):
        records = [f"{i:08d}:{k:06d}\n".encode() for k in range(writes)]
        s = socket.create_connection((host, port), timeout=30)
        with s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # No pause between connect and the first byte: the race this checks is
            # data sent before the proxy's end of the loopback connection is ready.
            for r in records:
                s.sendall(r)
                if gap_ms:
                    time.sleep(gap_ms / 1000)
            s.shutdown(socket.SHUT_WR)
            _, got = read_all_bytes(s)
        return got == b"".join(records)

    ok = bad = errors = 0
    with ThreadPoolExecutor(16) as pool:
        for r in pool.map(lambda i: _catch(one, i), range(count)):
            if r is True:
                ok += 1
            elif r is False:
                bad += 1
            else:
                errors += 1
                if errors <= 5:
                    print(f"error {r!r}", flush=True)
    print(f"ok={ok} bad={bad} errors={errors}", flush=True)


def blocking(host, port, count):
    ok = eagain = errors = 0
    for i in range(count):
        try:
            s = socket.create_connection((host, port))
            s.settimeout(None)
            with s:
                line = f"blocking {i}\n".encode()
                s.sendall(line)
                s.shutdown(socket.SHUT_WR)
                _, got = read_all_bytes(s)
            if got == line:
                ok += 1
            else:
                errors += 1
        except BlockingIOError:
            eagain += 1
        except OSError as e:
            errors += 1
            print(f"error {e!r}", flush=True)
    print(f"ok={ok} eagain={eagain} errors={errors}", flush=True)


def serve_trickle(port, chunk, count, gap_ms):
    data = bytes(range(256)) * (chunk // 256 + 1)

    def handle(conn):
        with conn:
            try:
                got = b""
                while not got.endswith(b"\n"):
                    b = conn.recv(256)
                    if not b:
                        return
                    got += b
                for _ in range(count):
                    conn.sendall(data[:chunk])
                    time.sleep(gap_ms / 1000)
                conn.shutdown(socket.SHUT_WR)
                read_all(conn)
            except OSError as e:
                print(f"error {e}", flush=True)

    s = listener(port)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def ask(host, port, text):
    conn = connect(host, port)
    line = f"{text}\n".encode()
    conn.sendall(line)
    n, _ = read_all(conn)
    conn.close()
    print(f"sent={len(line)} received={n}", flush=True)


def _catch(f, arg):
    try:
        return f(arg)
    except OSError as e:
        return e


def read_all_bytes(conn):
    parts = []
    n = 0
    while True:
        b = conn.recv(CHUNK)
        if not b:
            return n, b"".join(parts)
        n += len(b)
        parts.append(b)


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "serve-stream":
        serve_stream(int(args[0]), int(args[1]))
    elif cmd == "serve-sink":
        serve_sink(int(args[0]))
    elif cmd == "serve-reply-after-eof":
        serve_reply_after_eof(int(args[0]))
    elif cmd == "serve-reset":
        serve_reset(int(args[0]))
    elif cmd == "serve-echo":
        serve_echo(int(args[0]))
    elif cmd == "fetch":
        fetch(args[0], int(args[1]))
    elif cmd == "push":
        push(args[0], int(args[1]), int(args[2]))
    elif cmd == "read-expect-error":
        read_expect_error(args[0], int(args[1]))
    elif cmd == "serve-no-accept":
        serve_no_accept(int(args[0]))
    elif cmd == "echo-then-again":
        echo_then_again(args[0], int(args[1]), args[2])
    elif cmd == "echo-then-idle":
        echo_then_again(args[0], int(args[1]), None)
    elif cmd == "many":
        many(args[0], int(args[1]), int(args[2]))
    elif cmd == "serve-zeros":
        serve_zeros(int(args[0]), int(args[1]))
    elif cmd == "drain":
        drain(args[0], int(args[1]))
    elif cmd == "hold":
        hold(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif cmd == "serve-hello":
        serve_hello(int(args[0]), args[1])
    elif cmd == "burst":
        burst(args[0], int(args[1]), int(args[2]), int(args[3]), *map(float, args[4:5]))
    elif cmd == "serve-trickle":
        serve_trickle(int(args[0]), int(args[1]), int(args[2]), float(args[3]))
    elif cmd == "ask":
        ask(args[0], int(args[1]), args[2])
    elif cmd == "serve-echo-log":
        serve_echo_log(int(args[0]), args[1])
    elif cmd == "echo-load":
        echo_load(args[0], int(args[1]), float(args[2]), float(args[3]), *map(int, args[4:5]))
    elif cmd == "blocking":
        blocking(args[0], int(args[1]), int(args[2]))
    elif cmd == "digest":
        print(f"sha256={digest(int(args[0]))}")
    else:
        sys.exit(f"unknown command {cmd}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
