#!/usr/bin/env python3
"""Latency and counting proxy for the S3 benchmark (scripts/bench-s3.sh).

Listens on 127.0.0.1:LISTEN, forwards plain HTTP/1.1 to 127.0.0.1:UPSTREAM, holds every
request's head back by --delay-ms before forwarding it (one added delay per request,
pipelined or not), and counts requests. Request boundaries come from Content-Length or
chunked transfer encoding, so keep-alive connections and request bodies are followed
exactly; responses are passed through byte for byte.

Counts (by method, by S3 operation, bytes each way, connections) are written as JSON to
--stats on SIGUSR1 (atomically: a temporary file then a rename) and on SIGTERM/SIGINT,
after which the proxy exits. The benchmark takes a snapshot before and after each phase
and subtracts.

Python 3.11 standard library only.
"""
import argparse
import asyncio
import json
import os
import signal
import sys
from collections import Counter
from urllib.parse import parse_qs, urlsplit

HEAD_LIMIT = 1 << 20
COPY_BLOCK = 1 << 16


class Stats:
    def __init__(self):
        self.methods = Counter()  # HEAD GET LIST PUT POST DELETE (LIST: GET on a bucket)
        self.ops = Counter()  # finer: PUT-part, POST-create-multipart, POST-delete, ...
        self.bytes_up = 0  # client -> server, heads and bodies
        self.bytes_down = 0  # server -> client
        self.connections = 0
        self.errors = 0

    def snapshot(self):
        return {
            "requests": sum(self.methods.values()),
            "methods": dict(self.methods),
            "ops": dict(self.ops),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "connections": self.connections,
            "errors": self.errors,
        }


stats = Stats()
request_log = None  # --log: one line per request (time, method, target, Range)


def classify(method, target, headers):
    """(method bucket, operation) of one S3 request, path-style addressing."""
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    path = parts.path.lstrip("/")
    key = path.split("/", 1)[1] if "/" in path else ""
    if method == "GET":
        if not path:
            return "LIST", "LIST-buckets"
        if not key:
            return "LIST", "LIST-objects"
        if "uploadId" in query:
            return "LIST", "LIST-parts"
        if "range" in headers:
            return "GET", "GET-range"
        return "GET", "GET"
    if method == "PUT":
        if "partNumber" in query:
            return "PUT", "PUT-part-copy" if "x-amz-copy-source" in headers else "PUT-part"
        if "x-amz-copy-source" in headers:
            return "PUT", "PUT-copy"
        if not key:
            return "PUT", "PUT-bucket"
        return "PUT", "PUT"
    if method == "POST":
        if "uploads" in query:
            return "POST", "POST-create-multipart"
        if "uploadId" in query:
            return "POST", "POST-complete-multipart"
        if "delete" in query:
            return "POST", "POST-delete-objects"
        return "POST", "POST"
    if method == "DELETE":
        if "uploadId" in query:
            return "DELETE", "DELETE-abort-multipart"
        return "DELETE", "DELETE"
    return method, method


async def copy_exact(reader, writer, n):
    while n > 0:
        block = await reader.readexactly(min(n, COPY_BLOCK))
        writer.write(block)
        stats.bytes_up += len(block)
        n -= len(block)
        await writer.drain()


async def copy_chunked(reader, writer):
    while True:
        line = await reader.readuntil(b"\r\n")
        writer.write(line)
        stats.bytes_up += len(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailers, then the empty line that ends the body.
            while True:
                t = await reader.readuntil(b"\r\n")
                writer.write(t)
                stats.bytes_up += len(t)
                if t == b"\r\n":
                    break
            await writer.drain()
            return
        await copy_exact(reader, writer, size + 2)  # the data and its CRLF


async def client_to_server(creader, uwriter, delay):
    while True:
        try:
            head = await creader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if e.partial:
                stats.errors += 1
            return
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            stats.errors += 1
            return
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if delay > 0:
            await asyncio.sleep(delay)
        m, op = classify(method, target, headers)
        if request_log:
            request_log.write(f"{asyncio.get_running_loop().time():.3f} {method} {target} {headers.get('range', '-')}\n")
        stats.methods[m] += 1
        stats.ops[op] += 1
        uwriter.write(head)
        stats.bytes_up += len(head)
        await uwriter.drain()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            await copy_chunked(creader, uwriter)
        elif int(headers.get("content-length", "0") or 0) > 0:
            await copy_exact(creader, uwriter, int(headers["content-length"]))


async def server_to_client(ureader, cwriter):
    while True:
        block = await ureader.read(COPY_BLOCK)
        if not block:
            return
        stats.bytes_down += len(block)
        cwriter.write(block)
        await cwriter.drain()


def close(writer):
    try:
        writer.close()
    except Exception:
        pass


async def handle(creader, cwriter, upstream, delay):
    try:
        ureader, uwriter = await asyncio.open_connection(*upstream, limit=HEAD_LIMIT)
    except OSError:
        stats.errors += 1
        close(cwriter)
        return
    stats.connections += 1
    down = asyncio.create_task(server_to_client(ureader, cwriter))
    up = asyncio.create_task(client_to_server(creader, uwriter, delay))
    try:
        # Whichever side ends first ends the connection: a server closing after its
        # response (Connection: close) must not leave the client waiting on us.
        done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if up in done:
            # The client has sent everything: let the last response through.
            try:
                if uwriter.can_write_eof():
                    uwriter.write_eof()
            except OSError:
                pass
            await asyncio.wait({down}, timeout=600)
        for t in (up, down):
            if not t.done():
                t.cancel()
        for t in (up, down):
            try:
                await t
            except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError, ValueError, OSError):
                pass
    finally:
        close(uwriter)
        close(cwriter)


def write_stats(path):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(stats.snapshot(), f, indent=1, sort_keys=True)
    os.replace(tmp, path)


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen-port", type=int, required=True)
    ap.add_argument("--upstream-port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=20.0, help="added to every request (default 20)")
    ap.add_argument("--stats", required=True, help="JSON file written on SIGUSR1 and at exit")
    ap.add_argument("--log", help="append one line per request here (time, method, target, Range)")
    a = ap.parse_args()
    global request_log
    if a.log:
        request_log = open(a.log, "a", buffering=1)
    delay = a.delay_ms / 1000.0
    upstream = ("127.0.0.1", a.upstream_port)
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, upstream, delay), "127.0.0.1", a.listen_port, limit=HEAD_LIMIT
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, write_stats, a.stats)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()
    write_stats(a.stats)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
