#!/usr/bin/env python3
"""HTTP/1 framing matrix: the same adversarial byte strings through nginx, HAProxy and Weir.

Every proxy listens on its own loopback port and forwards to its own *recording upstream*: a
raw-socket server in this script with a deliberately STRICT HTTP/1 parser (CRLF only, one
Content-Length or exactly `Transfer-Encoding: chunked`, no obs-fold, no CTLs). For every case
(IDs R1..R18 and U1..U11 from the Weir framing policy, issue 11) the script records

  * every response the client got, in order (status, and for response-side cases the body),
  * whether the proxy closed the client connection (and when, for the slow cases),
  * what reached the upstream: each request's target, Host values, body length, and whether it
    was complete, aborted mid-way, or rejected by the strict parser.

Request-side cases (R*) send raw bytes from the client; where it makes sense a harmless
`GET /next` is appended in the same write, so a proxy that loses track of framing shows it as a
missing or extra response, or as a request the upstream should never have seen (targets /smug*).
Response-side cases (U*) make the upstream answer `GET /u` with scripted raw bytes, then send a
follow-up `GET /after` (on the same client connection when it is still open), to see whether the
proxy reused a poisoned upstream connection.

    benches/framing-matrix.py                          # nginx + HAProxy
    benches/framing-matrix.py --weir target/release/weir --out framing-matrix.md
    benches/framing-matrix.py --weir before=/tmp/old/weir --weir after=target/release/weir
    benches/framing-matrix.py --only R1,R4,U3 --json results.json

Needs python3 (stdlib only), nginx and HAProxy: the Debian packages are installed with apt when
missing (as root), with their services kept from starting. Each proxy runs with one worker on
127.0.0.1 ephemeral ports and temp configs, and is stopped at the end. Nothing leaves loopback.
The whole run takes about 4 minutes (the slow cases R14b/R15/R16/R18 wait 15-35 s each; the
proxies are exercised in parallel, one thread per proxy; --skip-slow leaves them out).
"""

import argparse
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

LOOP = "127.0.0.1"
HOST = "app.local"  # the Host every test request carries
NEXT = b"GET /next HTTP/1.1\r\nHost: app.local\r\n\r\n"  # appended to detect desync

# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def free_port():
    """An unused loopback port (the kernel's ephemeral range)."""
    with socket.socket() as s:
        s.bind((LOOP, 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((LOOP, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def short_bytes(b, n=14):
    """A printable, bounded rendering of a response body for the table."""
    if not b:
        return ""
    if len(b) <= n and all(32 <= c < 127 for c in b):
        return b.decode()
    return f"{len(b)}b"


def find_head_end(buf, start=0):
    """Index just past the empty line ending a message head, tolerating bare LF (the callers
    flag bare LF themselves). None if the head is not complete yet."""
    pos = start
    first = True
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return None
        line = buf[pos:nl]
        if not first and line in (b"", b"\r"):
            return nl + 1
        first = False
        pos = nl + 1


# --------------------------------------------------------------------------------------------
# The recording upstream
# --------------------------------------------------------------------------------------------

TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
REQUEST_LINE = re.compile(rb"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/(1\.[01])$")


class Abort(Exception):
    """The peer closed (or the case ended) in the middle of a request."""


class BadRequest(Exception):
    """The strict parser rejected what the proxy sent."""


class ConnReader:
    """Buffered reads from one upstream-side connection."""

    def __init__(self, sock, upstream):
        self.sock = sock
        self.up = upstream
        self.buf = b""
        sock.settimeout(0.5)

    def more(self, epoch=None):
        """Read more bytes. While inside a request (epoch given), give up when the case that
        request belongs to has ended, so a stuck request cannot leak into the next case."""
        while True:
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                if self.up.stopping or (epoch is not None and epoch != self.up.epoch):
                    raise Abort("case ended")
                continue
            except OSError as e:
                raise Abort(str(e))
            if not d:
                raise Abort("eof")
            self.buf += d
            return

    def take(self, n):
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class Upstream:
    """A raw-socket HTTP/1 server that records every request it parses.

    Behaviour by target: `/u` answers with the case's scripted raw bytes (response-side cases),
    `/early` answers before reading the request body, `/never` never answers, `/big?mb=N`
    streams an N MiB body; anything else is answered `200` with body `ok#K`, K being the
    request's number within the current case. Bad input is recorded and the connection closed
    without an answer."""

    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.epoch = 0
        self.reqs = []
        self.script = None
        self.conns = {}  # id -> [socket, tainted]
        self.seq = 0
        self.stopping = False
        self.t0 = time.monotonic()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((LOOP, 0))
        self.lsock.listen(128)
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    # -- case bookkeeping --

    def begin_case(self, script=None):
        """Start a new case: forget the records, close connections that carried scripted
        (possibly poisoned) bytes so they cannot affect the next case."""
        self.close_tainted()
        with self.lock:
            self.epoch += 1
            self.reqs = []
            self.script = script
            self.t0 = time.monotonic()

    def close_tainted(self):
        with self.lock:
            for s, tainted in self.conns.values():
                if tainted:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def snapshot(self):
        with self.lock:
            return [dict(r) for r in self.reqs]

    def stop(self):
        self.stopping = True
        try:
            self.lsock.close()
        except OSError:
            pass

    # -- serving --

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.seq += 1
                cid = self.seq
                self.conns[cid] = [s, False]
            threading.Thread(target=self._serve, args=(s, cid), daemon=True).start()

    def _serve(self, s, cid):
        r = ConnReader(s, self)
        try:
            while not self.stopping:
                if not self._one_request(r, s, cid):
                    break
        except (Abort, OSError):
            pass
        finally:
            with self.lock:
                self.conns.pop(cid, None)
            try:
                s.close()
            except OSError:
                pass

    def _record(self, rec):
        with self.lock:
            self.reqs.append(rec)
            return len(self.reqs), self.epoch

    def _one_request(self, r, s, cid):
        """Parse and answer one request. Returns False when the connection must close."""
        # Head: wait for the first byte without a deadline (an idle keep-alive connection).
        while True:
            end = find_head_end(r.buf)
            if end is not None:
                break
            if len(r.buf) > 256 * 1024:
                self._record({"conn": cid, "bad": "head>256K", "complete": False})
                return False
            try:
                r.more(None if not r.buf else self.epoch)
            except Abort:
                if r.buf.strip():
                    self._record({"conn": cid, "bad": "partial head", "complete": False,
                                  "raw": r.buf[:200].decode("latin-1")})
                return False
        head = r.take(end)
        rec = {"conn": cid, "t": round(time.monotonic() - self.t0, 2), "complete": False,
               "bad": None, "raw": head[:300].decode("latin-1")}
        try:
            self._parse_head(head, rec)
        except BadRequest as e:
            rec["bad"] = str(e)
            self._record(rec)
            return False
        num, epoch = self._record(rec)
        target = rec["target"]

        # Early answer: respond before reading the body (R14).
        if target.startswith("/early"):
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
        try:
            self._read_body(r, rec, epoch)
        except BadRequest as e:
            rec["bad"] = str(e)
            return False
        except Abort as e:
            rec["aborted"] = str(e)
            raise
        rec["complete"] = True
        keep = "close" not in rec["connection"].lower() and rec["version"] == "1.1"

        if target.startswith("/early"):
            return keep
        if target.startswith("/never"):
            while True:  # hold the request until the case ends or the proxy gives up
                r.more(epoch)
        if target.startswith("/big?"):
            m = re.search(r"mb=(\d+)", target)
            self._stream(s, rec, int(m.group(1)) if m else 32, epoch)
            return False
        if target.startswith("/u") and self.script is not None:
            with self.lock:
                if cid in self.conns:
                    self.conns[cid][1] = True  # tainted: closed at the next case
            for item in self.script:
                if isinstance(item, bytes):
                    s.sendall(item)
                elif item[0] == "sleep":
                    time.sleep(item[1])
                elif item[0] == "close":
                    return False
            return keep
        body = f"ok#{num}".encode()
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(body), body))
        return keep

    def _parse_head(self, head, rec):
        """Strict RFC 9112 parsing of a request head; raises BadRequest with a short reason."""
        # `head` ends with its empty line; split it into lines without their line ends.
        raw_lines = head[:-1].split(b"\n")
        if raw_lines and raw_lines[-1] in (b"", b"\r"):
            raw_lines = raw_lines[:-1]
        lines, problems = [], []
        if not head.endswith(b"\r\n\r\n"):
            problems.append("bare LF")
        for ln in raw_lines:
            if not ln.endswith(b"\r"):
                problems.append("bare LF")
            else:
                ln = ln[:-1]
            if b"\r" in ln:
                problems.append("bare CR")
            lines.append(ln)
        rec["headers"] = [ln.decode("latin-1") for ln in lines[1:]]
        m = REQUEST_LINE.match(lines[0]) if lines else None
        if not m:
            rec["method"], rec["target"], rec["version"] = "?", lines[0][:60].decode("latin-1") if lines else "", "?"
            raise BadRequest("request line")
        rec["method"], rec["target"], rec["version"] = (m.group(1).decode(), m.group(2).decode("latin-1"),
                                                        m.group(3).decode())
        fields = []
        for ln in lines[1:]:
            if ln[:1] in (b" ", b"\t"):
                problems.append("obs-fold")
                continue
            name, sep, value = ln.partition(b":")
            if not sep or not TOKEN.match(name):
                problems.append("field name")
                continue
            value = value.strip(b" \t")
            if any(c < 32 and c != 9 or c == 127 for c in value):
                problems.append("CTL in value")
            fields.append((name.decode("latin-1").lower(), value.decode("latin-1")))
        rec["hosts"] = [v for n, v in fields if n == "host"]
        rec["connection"] = ",".join(v for n, v in fields if n == "connection")
        te = [v for n, v in fields if n == "transfer-encoding"]
        cl = [v for n, v in fields if n == "content-length"]
        rec["framing"] = "none"
        if problems:
            raise BadRequest(problems[0])
        if te:
            if cl:
                raise BadRequest("CL+TE")
            if len(te) != 1 or te[0].lower() != "chunked":
                raise BadRequest("TE=" + ",".join(te)[:20])
            if rec["version"] != "1.1":
                raise BadRequest("TE in 1.0")
            rec["framing"] = "chunked"
        elif cl:
            if len(cl) != 1:
                raise BadRequest("%dxCL" % len(cl))
            if not cl[0].isdigit() or len(cl[0]) > 18:
                raise BadRequest("CL=" + cl[0][:20])
            rec["framing"] = "cl:" + str(int(cl[0]))
        # A Host count other than one in HTTP/1.1 is only recorded (shown as H=...), not rejected.

    def _read_body(self, r, rec, epoch):
        rec["body_len"] = 0
        sample = b""
        if rec["framing"].startswith("cl:"):
            left = int(rec["framing"][3:])
            while left:
                if not r.buf:
                    r.more(epoch)
                chunk = r.take(left)
                left -= len(chunk)
                rec["body_len"] += len(chunk)
                sample = (sample + chunk)[:80]
        elif rec["framing"] == "chunked":
            while True:
                while b"\n" not in r.buf:
                    if len(r.buf) > 8192:
                        raise BadRequest("chunk line>8K")
                    r.more(epoch)
                line, _, r.buf = r.buf.partition(b"\n")
                if not line.endswith(b"\r"):
                    raise BadRequest("chunk bare LF")
                size_s = line[:-1].split(b";", 1)[0]
                if not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size_s):
                    raise BadRequest("chunk size " + size_s[:12].decode("latin-1"))
                size = int(size_s, 16)
                if size == 0:
                    break
                left = size
                while left:
                    if not r.buf:
                        r.more(epoch)
                    chunk = r.take(left)
                    left -= len(chunk)
                    rec["body_len"] += len(chunk)
                    sample = (sample + chunk)[:80]
                while len(r.buf) < 2:
                    r.more(epoch)
                if r.take(2) != b"\r\n":
                    raise BadRequest("chunk data CRLF")
            while True:  # trailer section
                while b"\n" not in r.buf:
                    r.more(epoch)
                line, _, r.buf = r.buf.partition(b"\n")
                if line == b"\r":
                    break
                if not line.endswith(b"\r"):
                    raise BadRequest("trailer bare LF")
        rec["body_sample"] = sample.decode("latin-1")

    def _stream(self, s, rec, mb, epoch):
        """Send an mb MiB response body, recording how far it got and why it stopped."""
        total = mb << 20
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"x" * 65536
        sent = 0
        start = time.monotonic()
        rec["stream"] = {"sent": 0, "end": None, "t": None}
        while sent < total:
            if epoch != self.epoch or self.stopping:
                rec["stream"]["end"] = "case ended"
                break
            try:
                n = s.send(block[: min(len(block), total - sent)])
            except socket.timeout:
                continue
            except OSError as e:
                rec["stream"]["end"] = type(e).__name__
                break
            sent += n
            rec["stream"]["sent"] = sent
        else:
            rec["stream"]["end"] = "done"
        rec["stream"]["t"] = round(time.monotonic() - start, 1)


# --------------------------------------------------------------------------------------------
# The client side
# --------------------------------------------------------------------------------------------


def parse_responses(buf, closed):
    """Split what the client received into responses (lenient, like a browser would). Each is
    a dict: status (None for junk), body, complete, interim."""
    out = []
    pos = 0
    while pos < len(buf):
        end = find_head_end(buf, pos)
        first = buf[pos: buf.find(b"\n", pos) if b"\n" in buf[pos:] else len(buf)].rstrip(b"\r")
        m = re.match(rb"HTTP/\d\.\d (\d{3})", first)
        if not m:
            out.append({"status": None, "junk": len(buf) - pos, "complete": False})
            break
        if end is None:
            out.append({"status": int(m.group(1)), "partial_head": True, "complete": False, "body": b""})
            break
        status = int(m.group(1))
        fields = {}
        for ln in buf[pos:end].split(b"\n")[1:]:
            name, sep, value = ln.rstrip(b"\r").partition(b":")
            if sep:
                fields.setdefault(name.strip().lower().decode("latin-1"), []).append(value.strip().decode("latin-1"))
        pos = end
        resp = {"status": status, "complete": True, "body": b"", "headers": fields}
        te = ",".join(fields.get("transfer-encoding", [])).lower()
        cl = fields.get("content-length", [])
        if 100 <= status < 200 and status != 101:
            resp["interim"] = True
        elif status == 101:
            resp["body"], pos = buf[pos:], len(buf)  # tunnel: the rest is raw bytes
        elif status in (204, 304):
            pass
        elif te.split(",")[-1].strip() == "chunked":
            body = b""
            while True:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    resp["complete"], pos = False, len(buf)
                    break
                try:
                    size = int(buf[pos:nl].split(b";")[0].strip(), 16)
                except ValueError:
                    resp["complete"], resp["badchunk"], pos = False, True, len(buf)
                    break
                pos = nl + 1
                if size == 0:
                    # trailers: up to an empty line
                    nl2 = buf.find(b"\n", pos)
                    while nl2 >= 0 and buf[pos:nl2].rstrip(b"\r"):
                        pos = nl2 + 1
                        nl2 = buf.find(b"\n", pos)
                    if nl2 < 0:
                        resp["complete"], pos = False, len(buf)
                    else:
                        pos = nl2 + 1
                    break
                if len(buf) - pos < size:
                    body += buf[pos:]
                    resp["complete"], pos = False, len(buf)
                    break
                body += buf[pos:pos + size]
                pos += size
                crlf_end = buf.find(b"\n", pos)
                pos = crlf_end + 1 if crlf_end >= 0 else len(buf)
            resp["body"] = body
        elif len(cl) >= 1 and cl[0].isdigit():
            n = int(cl[0])
            resp["body"] = buf[pos:pos + n]
            resp["complete"] = len(buf) - pos >= n
            pos = min(len(buf), pos + n)
        else:  # read until close
            resp["body"], pos = buf[pos:], len(buf)
            resp["complete"] = closed
            resp["until_close"] = True
        out.append(resp)
    return out


def finals_done(resps):
    return sum(1 for r in resps if r.get("status") and not r.get("interim") and r["complete"])


def run_client(port, parts, expect=1, first_wait=3.0, quiet=0.6, max_total=40.0):
    """Connect, send `parts` from a sender thread while reading everything back.

    parts items: bytes (sent at once); ("sleep", s); ("await", n, timeout): wait for n complete
    responses (or close); ("call", fn): fn(state); ("drip", data, chunk, interval, max_s): send data `chunk` bytes at a
    time. Reading stops at EOF/RST, or once the sender is done and nothing came for `quiet`
    seconds (when `expect` responses are in) or `first_wait` seconds (when not)."""
    s = socket.create_connection((LOOP, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(None)
    t0 = time.monotonic()
    st = {"buf": b"", "closed": None, "t_close": None, "sent_items": 0, "send_error": None,
          "done_t": None, "resps": [], "sent_all": False}
    cond = threading.Condition()

    def sender():
        try:
            for item in parts:
                if st["closed"]:
                    break
                if isinstance(item, bytes):
                    s.sendall(item)
                elif item[0] == "sleep":
                    end = time.monotonic() + item[1]
                    while time.monotonic() < end and not st["closed"]:
                        time.sleep(0.02)
                elif item[0] == "call":
                    item[1](st)
                elif item[0] == "await":
                    with cond:
                        cond.wait_for(lambda: st["closed"] or finals_done(st["resps"]) >= item[1],
                                      timeout=item[2])
                    continue
                elif item[0] == "drip":
                    data, chunk, interval, max_s = item[1:]
                    end = time.monotonic() + max_s
                    for i in range(0, len(data), chunk):
                        if st["closed"] or time.monotonic() > end:
                            break
                        s.sendall(data[i:i + chunk])
                        time.sleep(interval)
                st["sent_items"] += 1
            else:
                st["sent_all"] = not st["closed"]
        except OSError as e:
            st["send_error"] = type(e).__name__
        finally:
            st["done_t"] = time.monotonic()

    th = threading.Thread(target=sender, daemon=True)
    th.start()
    last = t0
    while True:
        now = time.monotonic()
        if now - t0 > max_total:
            break
        rd, _, _ = select.select([s], [], [], 0.05)
        if rd:
            try:
                d = s.recv(262144)
            except OSError:
                d, st["closed"] = b"", "rst"
            if not d:
                st["closed"] = st["closed"] or "close"
                st["t_close"] = round(time.monotonic() - t0, 1)
                with cond:
                    cond.notify_all()
                break
            st["buf"] += d
            last = time.monotonic()
            with cond:
                st["resps"] = parse_responses(st["buf"], False)
                cond.notify_all()
            continue
        if st["done_t"] is not None:
            idle = now - max(last, st["done_t"])
            limit = quiet if finals_done(st["resps"]) >= expect else first_wait
            if idle > limit:
                break
    th.join(timeout=0.1)
    s.close()
    st["resps"] = parse_responses(st["buf"], bool(st["closed"]))
    st["elapsed"] = round(time.monotonic() - t0, 1)
    return st


def run_slow_reader(port, up, mb=32, wait=15.0):
    """R16: ask for an mb MiB body and do not read; after `wait` s (or once the upstream side is
    closed) drain the connection and count what arrives before EOF."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.connect((LOOP, port))
    s.sendall(b"GET /big?mb=%d HTTP/1.1\r\nHost: app.local\r\n\r\n" % mb)
    t0 = time.monotonic()
    while time.monotonic() - t0 < wait:
        time.sleep(0.25)
        recs = up.snapshot()
        stream = recs[0].get("stream") if recs else None
        if stream and stream["end"] and stream["end"] != "done":
            time.sleep(0.5)
            break
    t_wait = round(time.monotonic() - t0, 1)
    got, closed = 0, None
    s.settimeout(2.0)
    try:
        while True:
            d = s.recv(1 << 20)
            if not d:
                closed = "close"
                break
            got += len(d)
    except socket.timeout:
        pass
    except OSError:
        closed = "rst"
    s.close()
    return {"got": got, "closed": closed, "t_wait": t_wait, "total": mb << 20}


# --------------------------------------------------------------------------------------------
# The cases (IDs and meanings from the Weir framing policy, issue 11)
# --------------------------------------------------------------------------------------------


def req(first, *fields, body=b"", host=True):
    """Build request bytes: request line, optional Host, extra field lines (str or bytes)."""
    lines = [first.encode() if isinstance(first, str) else first]
    if host:
        lines.append(b"Host: " + HOST.encode())
    lines += [f.encode() if isinstance(f, str) else f for f in fields]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class Case:
    def __init__(self, cid, short, parts=None, kind="req", expect=2, first_wait=3.0, quiet=0.6,
                 script=None, show_host=False, show_time=False, slow=False):
        self.id, self.short, self.parts, self.kind = cid, short, parts, kind
        self.expect, self.first_wait, self.quiet = expect, first_wait, quiet
        self.script, self.show_host, self.show_time, self.slow = script, show_host, show_time, slow


SMUG = b"GET /smug HTTP/1.1\r\nHost: app.local\r\n\r\n"
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"


def request_cases():
    c = []
    # R1/R2: both framings present; the two readings disagree about where /smug starts.
    b1 = b"0\r\n\r\n" + SMUG
    c.append(Case("R1", "CL:45 + TE:chunked; body `0` chunk + GET /smug",
                  [req("POST / HTTP/1.1", f"Content-Length: {len(b1)}", "Transfer-Encoding: chunked",
                       body=b1) + NEXT]))
    size_line = b"%x\r\n" % len(SMUG)
    b2 = size_line + SMUG + b"\r\n0\r\n\r\n"
    c.append(Case("R2", f"TE:chunked + CL:{len(size_line)}; chunk holds GET /smug",
                  [req("POST / HTTP/1.1", "Transfer-Encoding: chunked", f"Content-Length: {len(size_line)}",
                       body=b2) + NEXT]))
    # R3: Transfer-Encoding other than exactly one `chunked`.
    for sub, short, fields in [
        ("a", "TE: xchunked", ["Transfer-Encoding: xchunked"]),
        ("b", "TE: chunked, identity", ["Transfer-Encoding: chunked, identity"]),
        ("c", "TE: identity", ["Transfer-Encoding: identity"]),
        ("d", "TE: gzip, chunked", ["Transfer-Encoding: gzip, chunked"]),
        ("e", "two TE: chunked lines", ["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"]),
        ("f", "`Transfer-Encoding : chunked`", ["Transfer-Encoding : chunked"]),
    ]:
        c.append(Case("R3" + sub, short + "; body 5 hello 0",
                      [req("POST / HTTP/1.1", *fields, body=CHUNKED_HELLO) + NEXT]))
    # R4: Content-Length variants; body is always "hello".
    for sub, short, fields in [
        ("a", "two CL: 5, 5", ["Content-Length: 5", "Content-Length: 5"]),
        ("b", "two CL: 5, 6", ["Content-Length: 5", "Content-Length: 6"]),
        ("c", "CL: 5, 5 (list)", ["Content-Length: 5, 5"]),
        ("d", "CL: +5", ["Content-Length: +5"]),
        ("e", "CL: -1", ["Content-Length: -1"]),
        ("f", "CL: 0x5", ["Content-Length: 0x5"]),
        ("g", "CL: 5 5", ["Content-Length: 5 5"]),
        ("h", "CL: 0...05 (21 digits)", ["Content-Length: " + "0" * 20 + "5"]),
        ("i", "CL: 2^64+5 (20 digits)", ["Content-Length: %d" % (2**64 + 5)]),
        ("j", "CL: ` 5 ` (OWS, valid)", ["Content-Length:  5 "]),
    ]:
        c.append(Case("R4" + sub, short + "; body hello", [req("POST / HTTP/1.1", *fields, body=b"hello") + NEXT]))
    # R5: Connection naming framing or Host fields (a hop-by-hop strip would reframe the body).
    c.append(Case("R5a", "Connection: content-length; CL:5 hello",
                  [req("POST / HTTP/1.1", "Connection: content-length", "Content-Length: 5", body=b"hello") + NEXT]))
    c.append(Case("R5b", "Connection: keep-alive, Transfer-Encoding; chunked",
                  [req("POST / HTTP/1.1", "Connection: keep-alive, Transfer-Encoding",
                       "Transfer-Encoding: chunked", body=CHUNKED_HELLO) + NEXT]))
    c.append(Case("R5c", "Connection: keep-alive, HOST",
                  [req("GET /r5c HTTP/1.1", "Connection: keep-alive, HOST") + NEXT], show_host=True))
    # R6: chunked body abuse.
    for sub, short, body in [
        ("a", "chunk size 10000000000000005 (17 hex)", b"10000000000000005\r\nhello\r\n0\r\n\r\n"),
        ("b", "chunk size -5", b"-5\r\nhello\r\n0\r\n\r\n"),
        ("c", "chunk size 0x5", b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("d", "chunk size `5zz`", b"5zz\r\nhello\r\n0\r\n\r\n"),
        ("e", "no CRLF after chunk data (`helloXX`)", b"5\r\nhelloXX\r\n0\r\n\r\n"),
        ("f", "chunk extension 5000 bytes", b"5;a=" + b"b" * 5000 + b"\r\nhello\r\n0\r\n\r\n"),
    ]:
        c.append(Case("R6" + sub, short, [req("POST / HTTP/1.1", "Transfer-Encoding: chunked", body=body) + NEXT]))
    # R7: line ends.
    c.append(Case("R7a", "bare LF line ends in the head (ok: forward CRLF)",
                  [b"GET /lf HTTP/1.1\nHost: app.local\nX-A: 1\n\n" + NEXT]))
    c.append(Case("R7b", "bare CR inside a field value (`X-A: a\\rb`)",
                  [req("GET /cr HTTP/1.1", b"X-A: a\rb") + NEXT]))
    c.append(Case("R8", "obs-fold (`X-A: a` + ` b`)", [req("GET /fold HTTP/1.1", "X-A: a", " b") + NEXT]))
    # R9: CTLs.
    c.append(Case("R9a", "NUL in a field value", [req("GET /nul HTTP/1.1", b"X-A: a\x00b") + NEXT]))
    c.append(Case("R9b", "0x01 in a field value", [req("GET /ctl HTTP/1.1", b"X-A: a\x01b") + NEXT]))
    c.append(Case("R9c", "0x01 in the target", [req(b"GET /a\x01b HTTP/1.1") + NEXT]))
    # R10: absolute-form with a different Host.
    c.append(Case("R10", "GET http://app.local/x + Host: other",
                  [req("GET http://app.local/x HTTP/1.1", "Host: other", host=False) + NEXT], show_host=True))
    # R11: Host count.
    c.append(Case("R11a", "two Host fields (app.local, evil.local)",
                  [req("GET /2host HTTP/1.1", "Host: evil.local") + NEXT], show_host=True))
    c.append(Case("R11b", "HTTP/1.1 without Host", [req("GET /nohost HTTP/1.1", host=False) + NEXT], show_host=True))
    c.append(Case("R11c", "HTTP/1.0 without Host (ok)", [req("GET /h10 HTTP/1.0", host=False) + NEXT],
                  show_host=True))
    c.append(Case("R12", "HTTP/1.0 + TE: chunked",
                  [req("POST / HTTP/1.0", "Transfer-Encoding: chunked", body=CHUNKED_HELLO) + NEXT]))
    # R13: pipelining across Weir's fast and general paths.
    c.append(Case("R13", "pipelined GET /a, chunked POST /b, GET /c",
                  [req("GET /a HTTP/1.1") + req("POST /b HTTP/1.1", "Transfer-Encoding: chunked", body=CHUNKED_HELLO)
                   + req("GET /c HTTP/1.1")], expect=3))
    # R14: the upstream answers (or never answers) before the 1 MiB body arrived; the client then
    # sends a request-shaped piece of that body.
    # /never: HAProxy answers 504 after `timeout server` (5 s), Weir after its default request
    # timeout (30 s), nginx after proxy_read_timeout (60 s, beyond the wait).
    for sub, target, wait, short in [("a", "/early", 3.0, "upstream answers at once"),
                                      ("b", "/never", 33.0, "upstream never answers")]:
        c.append(Case("R14" + sub, f"POST {target} CL:1MiB + `GET /smug1`; after the answer "
                      f"(<= {wait:.0f}s) `GET /smug2` ({short})",
                      [req(f"POST {target} HTTP/1.1", "Content-Length: 1048576")
                       + SMUG.replace(b"/smug", b"/smug1"), ("await", 1, wait), ("sleep", 0.2),
                       SMUG.replace(b"/smug", b"/smug2")], expect=1, quiet=1.5, slow=sub == "b"))
    # R15: slowloris (1 byte / 100 ms, up to 15 s); the time of the close is reported.
    slow_head = req("GET /slow HTTP/1.1", "X-Pad: " + "a" * 200)
    c.append(Case("R15a", "head dribbled 1 B/100 ms (15 s max)",
                  [("drip", slow_head, 1, 0.1, 15.0)], expect=1, first_wait=0.5, show_time=True, slow=True))
    c.append(Case("R15b", "CRLFs then head, 1 B/100 ms",
                  [("drip", b"\r\n" * 40 + slow_head, 1, 0.1, 15.0)], expect=1, first_wait=0.5,
                  show_time=True, slow=True))
    big_slow = b"GET /slowbig HTTP/1.1\r\nHost: app.local\r\n" + b"".join(
        b"X-Pad-%03d: %s\r\n" % (i, b"a" * 1000) for i in range(80)) + b"\r\n"
    c.append(Case("R15c", "80 KiB head, 1 KiB / 200 ms",
                  [("drip", big_slow, 1024, 0.2, 15.0)], expect=1, first_wait=0.5, show_time=True, slow=True))
    c.append(Case("R16", "GET 32 MiB body, client never reads (15 s)", kind="slowread", slow=True))
    # R17: head limits.
    c.append(Case("R17a", "one 70 000-byte field (head > 64 KiB)",
                  [req("GET /bighead HTTP/1.1", "X-Big: " + "a" * 70000) + NEXT]))
    c.append(Case("R17b", "120 header fields",
                  [req("GET /manyfields HTTP/1.1", *[f"X-F{i}: {i}" for i in range(120)]) + NEXT]))
    # R18: a chunked body with 6 s gaps between chunks.
    c.append(Case("R18", "chunked POST, 1 chunk / 6 s (13 s total)",
                  [req("POST /slowbody HTTP/1.1", "Transfer-Encoding: chunked", body=b"5\r\nhello\r\n"),
                   ("sleep", 6), b"1\r\nx\r\n", ("sleep", 6), b"1\r\ny\r\n", ("sleep", 1), b"0\r\n\r\n"],
                  expect=1, first_wait=3.0, show_time=True, slow=True))
    return c


def response_cases():
    ok = b"HTTP/1.1 200 OK\r\n"
    c = []

    def u(cid, short, *script):
        c.append(Case(cid, short, kind="resp", script=list(script), expect=1))

    u("U1", "Connection: content-length, CL:5 hello", ok + b"Connection: content-length\r\nContent-Length: 5\r\n\r\nhello")
    u("U2", "Connection: transfer-encoding, chunked hello",
      ok + b"Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_HELLO)
    u("U3a", "204 + CL:5 + hello at once", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello")
    u("U3b", "204 + CL:5, hello 100 ms later", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
      ("sleep", 0.1), b"hello")
    u("U3c", "304 + CL:5 + hello at once", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello")
    u("U4", "CL:3 + TE: chunked, chunked hello",
      ok + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_HELLO)
    for sub, short, fields in [("a", "CL: +5", b"Content-Length: +5\r\n"),
                               ("b", "CL: 5, 6", b"Content-Length: 5, 6\r\n"),
                               ("c", "two CL: 5 / 6", b"Content-Length: 5\r\nContent-Length: 6\r\n"),
                               ("d", "two CL: 5 / 5", b"Content-Length: 5\r\nContent-Length: 5\r\n"),
                               ("e", "CL: 0x5", b"Content-Length: 0x5\r\n")]:
        u("U5" + sub, short + "; hello", ok + fields + b"\r\nhello")
    u("U6a", "chunked with bare LF (`5\\nhello\\n0\\n\\n`)",
      ok + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n")
    u("U6b", "chunked, bad size `xyz` then a fake response",
      ok + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nxyz\r\n"
      + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSMUGL")
    u("U7a", "obs-fold in the head", ok + b"X-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello")
    u("U7b", "`X-Sp : x` (space before colon)", ok + b"X-Sp : x\r\nContent-Length: 5\r\n\r\nhello")
    u("U7c", "`Content-Length : 5`", ok + b"Content-Length : 5\r\n\r\nhello")
    u("U8", "101 to a plain GET, then bytes",
      b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
      b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSMUGL")
    u("U9", "TE: gzip (no chunked), hello, upstream closes",
      ok + b"Transfer-Encoding: gzip\r\n\r\nhello", ("close",))
    u("U10", "head of 70 KiB", ok + b"X-Big: " + b"a" * 70000 + b"\r\nContent-Length: 5\r\n\r\nhello")
    u("U11", "CL:5 hello + a 2nd response (SMUGL) in the same write",
      ok + b"Content-Length: 5\r\n\r\nhello" + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSMUGL")
    return c


# --------------------------------------------------------------------------------------------
# Running one case against one proxy, and rendering the outcome
# --------------------------------------------------------------------------------------------

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")
U_FIRST = req("GET /u HTTP/1.1")
U_AFTER = req("GET /after HTTP/1.1")


def run_case(case, proxy):
    up = proxy.upstream
    up.begin_case(case.script)
    time.sleep(0.05)
    out = {"case": case.id, "proxy": proxy.name}
    if case.kind == "slowread":
        out["slow"] = run_slow_reader(proxy.port, up)
    elif case.kind == "resp":
        def kick(st):
            # No complete answer within 3 s (the proxy waits for more upstream bytes, e.g. reads
            # "until close"): close the upstream side and see what the proxy makes of it.
            if finals_done(st["resps"]) < 1 and not st["closed"]:
                st["kicked"] = True
                up.close_tainted()

        c1 = run_client(proxy.port, [U_FIRST, ("await", 1, 3.0), ("call", kick), ("await", 1, 2.0),
                                     ("sleep", 0.2), U_AFTER], expect=2)
        out["conns"] = [c1]
        if not c1["sent_all"]:  # the proxy closed before /after could go on that connection
            out["conns"].append(run_client(proxy.port, [U_AFTER], expect=1))
    else:
        out["conns"] = [run_client(proxy.port, case.parts, case.expect, case.first_wait, case.quiet)]
    time.sleep(0.4)  # let aborts reach the upstream
    out["up"] = up.snapshot()
    return out


def render_resps(conn, show_body, show_time):
    parts = []
    for r in conn["resps"]:
        if r.get("status") is None:
            parts.append("JUNK(%db)" % r.get("junk", 0))
            continue
        s = str(r["status"])
        if r.get("partial_head"):
            s += "(partial head)"
        if show_body and r["status"] < 400 and r.get("body"):
            s += "[" + short_bytes(r["body"]) + "]"
        if not r["complete"]:
            s += "*"
        parts.append(s)
    text = ",".join(parts) if parts else "none"
    if conn.get("kicked"):
        text = "hang>upclose: " + text
    if conn["closed"]:
        text += " " + conn["closed"]
        if show_time:
            text += "@%ss" % conn["t_close"]
    else:
        text += " open" + ("@%ss" % conn["elapsed"] if show_time else "")
    return text


def render_up(recs, case):
    items = []
    for r in recs:
        if r.get("bad") and "target" not in r:
            items.append("BAD:" + r["bad"])
            continue
        t = r.get("target", "?")
        if r.get("method") not in (None, "GET"):
            t = r["method"] + " " + t
        if "smug" in t or r.get("method") not in (None, "?") + METHODS:
            t = "DESYNC:" + t  # body bytes of the client became a request
        if r.get("body_len"):
            t += "+%d" % r["body_len"]
        if r.get("bad"):
            t += " BAD:" + r["bad"]
        elif not r.get("complete"):
            t += "!"  # aborted mid-request
        if case.show_host or len(r.get("hosts", [None])) != 1:
            t += " H=" + "/".join(r.get("hosts", [])) if r.get("hosts") else " H=none"
        if "stream" in r:
            st = r["stream"]
            t += " sent %.1fM %s@%ss" % (st["sent"] / 1048576, st["end"], st["t"])
        items.append(t)
    text = "up: %d" % len(recs)
    if items:
        text += " (" + ", ".join(items) + ")"
    if case.kind == "resp":
        conns = {}
        for r in recs:
            conns.setdefault(r.get("target"), r.get("conn"))
        if "/u" in conns and "/after" in conns:
            text += " same up-conn" if conns["/u"] == conns["/after"] else " new up-conn"
    return text


def render_cell(case, res):
    if case.kind == "slowread":
        sl = res["slow"]
        if sl["got"] >= sl["total"]:
            client = "not closed in %ss (drained all %d MiB)" % (sl["t_wait"], sl["total"] >> 20)
        else:
            client = "%s; client got %.1f/%d MiB" % (sl["closed"] or "open", sl["got"] / 1048576, sl["total"] >> 20)
        return client + "; " + render_up(res["up"], case)
    show_body = case.kind == "resp"
    conns = " // ".join(render_resps(c, show_body, case.show_time) for c in res["conns"])
    return conns + "; " + render_up(res["up"], case)


# --------------------------------------------------------------------------------------------
# The proxies
# --------------------------------------------------------------------------------------------


def ensure_installed():
    """Install nginx and HAProxy from Debian when missing, without starting their services."""
    need = [p for p in ("nginx", "haproxy") if not shutil.which(p) and not os.path.exists("/usr/sbin/" + p)]
    if not need:
        return
    if os.geteuid() != 0:
        sys.exit("missing %s; install them or run as root" % " ".join(need))
    print("installing: " + " ".join(need), file=sys.stderr)
    policy = "/usr/sbin/policy-rc.d"
    made = not os.path.exists(policy)
    if made:  # keep the packages' own services from starting (and taking port 80)
        with open(policy, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq"] + need, check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        if made:
            os.remove(policy)


def binary(name):
    return shutil.which(name) or "/usr/sbin/" + name


class Proxy:
    def __init__(self, name, work):
        self.name = name
        self.work = work
        self.upstream = Upstream(name)
        self.port = free_port()
        self.proc = None
        self.version = "?"

    def start(self):
        self.log = open(os.path.join(self.work, self.name + ".log"), "wb")
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        if not wait_port(self.port, self.proc):
            self.stop()
            with open(self.log.name, "rb") as f:
                tail = f.read()[-2000:].decode("latin-1")
            raise RuntimeError("%s did not start:\n%s" % (self.name, tail))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # by pid: only what this script started
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.upstream.stop()


class Nginx(Proxy):
    def command(self):
        conf = os.path.join(self.work, "nginx.conf")
        # Host forwarded as $host (what a reverse proxy in front of Weir-style apps does, and
        # what benches/compare.sh uses); otherwise nginx sends Host: <upstream name>.
        user = "user root;\n" if os.geteuid() == 0 else ""
        with open(conf, "w") as f:
            f.write(f"""{user}worker_processes 1;
pid {self.work}/nginx.pid;
error_log {self.work}/nginx.err info;
events {{ worker_connections 1024; }}
http {{
  access_log {self.work}/nginx.access;
  client_body_temp_path {self.work}/nginx-body;
  proxy_temp_path {self.work}/nginx-proxy;
  fastcgi_temp_path {self.work}/nginx-fastcgi;
  uwsgi_temp_path {self.work}/nginx-uwsgi;
  scgi_temp_path {self.work}/nginx-scgi;
  upstream rec {{
    server {LOOP}:{self.upstream.port};
    keepalive 16;
  }}
  server {{
    listen {LOOP}:{self.port};
    location / {{
      proxy_pass http://rec;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
    }}
  }}
}}
""")
        v = subprocess.run([binary("nginx"), "-v"], capture_output=True, text=True)
        self.version = (v.stderr or v.stdout).strip().split("/")[-1]
        return [binary("nginx"), "-e", self.work + "/nginx.err", "-p", self.work, "-c", conf,
                "-g", "daemon off;"]


class Haproxy(Proxy):
    def command(self):
        conf = os.path.join(self.work, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(f"""global
  nbthread 1
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 5s
  timeout server 5s
frontend in
  bind {LOOP}:{self.port}
  default_backend rec
backend rec
  server rec {LOOP}:{self.upstream.port}
""")
        v = subprocess.run([binary("haproxy"), "-v"], capture_output=True, text=True)
        self.version = v.stdout.split("\n")[0].split(" ")[2] if v.stdout else "?"
        return [binary("haproxy"), "-f", conf, "-db"]


class Weir(Proxy):
    def __init__(self, name, work, path, listener_extra):
        super().__init__(name, work)
        self.path = path
        self.listener_extra = listener_extra

    def command(self):
        conf = os.path.join(self.work, self.name + ".toml")
        # Outlier ejection and retries off, so one failing case cannot eject the only endpoint
        # or replay a request. Timeouts stay at Weir's defaults (request: 30 s).
        extra = "\n".join(self.listener_extra)
        with open(conf, "w") as f:
            f.write(f"""[admin]
addr = "{LOOP}:{free_port()}"
[runtime]
worker_threads = 1
shutdown_grace = "1s"
[listeners.main]
addr = "{LOOP}:{self.port}"
{extra}
[apps.web]
listener = "main"
[apps.web.split]
v1 = 100
[apps.web.versions.v1]
endpoints = [ {{ name = "rec", addr = "{LOOP}:{self.upstream.port}" }} ]
[apps.web.outlier]
max_failures = 0
[apps.web.retry]
attempts = 0
""")
        v = subprocess.run([self.path, "--version"], capture_output=True, text=True)
        self.version = v.stdout.strip().split(" ")[-1] if v.stdout else "?"
        return [self.path, "serve", "--config", conf]


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weir", action="append", default=[], metavar="[LABEL=]PATH",
                    help="a weir binary to include (repeatable); column LABEL, default 'weir'")
    ap.add_argument("--weir-listener", action="append", default=[], metavar="LINE",
                    help='extra line for [listeners.main], e.g. \'header_read_timeout = "1s"\'')
    ap.add_argument("--only", help="comma-separated case IDs or prefixes (R1,R4,U)")
    ap.add_argument("--skip-slow", action="store_true", help="skip R14b, R15, R16, R18 (about 80 s)")
    ap.add_argument("--no-nginx", action="store_true")
    ap.add_argument("--no-haproxy", action="store_true")
    ap.add_argument("--out", help="also write the markdown here")
    ap.add_argument("--json", help="write every raw observation here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, proxy logs)")
    args = ap.parse_args()

    if not (args.no_nginx and args.no_haproxy):
        ensure_installed()
    work = tempfile.mkdtemp(prefix="framing-matrix.")
    os.chmod(work, 0o755)
    proxies = []
    if not args.no_nginx:
        proxies.append(Nginx("nginx", work))
    if not args.no_haproxy:
        proxies.append(Haproxy("haproxy", work))
    for spec in args.weir:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = "weir", spec
        proxies.append(Weir(label, work, os.path.abspath(path), args.weir_listener))

    cases = request_cases() + response_cases()
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        cases = [c for c in cases if any(c.id == w or (c.id.startswith(w) and not c.id[len(w):len(w) + 1].isdigit())
                                         for w in wanted)]
    if args.skip_slow:
        cases = [c for c in cases if not c.slow]

    def cleanup(*_):
        for p in proxies:
            try:
                p.stop()
            except Exception:
                pass
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *a: (cleanup(), sys.exit(1)))
    results = {}
    try:
        for p in proxies:
            p.start()
        t_start = time.monotonic()
        for case in cases:
            outs = {}

            def one(p, case=case, outs=outs):
                try:
                    outs[p.name] = run_case(case, p)
                except Exception as e:  # keep going: one broken proxy must not stop the matrix
                    outs[p.name] = {"error": "%s: %s" % (type(e).__name__, e)}

            threads = [threading.Thread(target=one, args=(p,)) for p in proxies]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            results[case.id] = outs
            cells = {p.name: ("ERROR " + outs[p.name]["error"]) if "error" in outs[p.name]
                     else render_cell(case, outs[p.name]) for p in proxies}
            for p in proxies:
                outs[p.name]["cell"] = cells[p.name]
            print("%-5s %5.0fs  %s" % (case.id, time.monotonic() - t_start,
                                        "  |  ".join("%s: %s" % (n, c) for n, c in cells.items())),
                  file=sys.stderr)
            for p in proxies:  # a proxy that died is reported, and the run stops
                if p.proc.poll() is not None:
                    raise RuntimeError("%s exited (code %s) during %s" % (p.name, p.proc.returncode, case.id))
    finally:
        cleanup()

    # Markdown table.
    def esc(s):
        return s.replace("|", "\\|").replace("\r", "\\r").replace("\n", "\\n")

    lines = ["# HTTP/1 framing matrix", "",
             "Versions: " + ", ".join("%s %s" % (p.name, p.version) for p in proxies) + ".",
             "Generated by framing-matrix.py on " + time.strftime("%Y-%m-%d %H:%M") + ".", "",
             "Cell: responses the client got, in order (`*` = incomplete, `[..]` = body, `none` = no "
             "response, `//` = the follow-up went on a new connection), then whether the proxy closed "
             "the client connection (`close`/`rst`, `open` = still open when the client stopped "
             "waiting; `@Ns` = time since connect), then what the recording upstream saw after `up:`: "
             "the number of requests and their targets (`+N` body bytes, `!` aborted mid-request, "
             "`BAD:` rejected by its strict parser, `H=` Host values, `DESYNC:` client body bytes "
             "that arrived as a request of their own).", "",
             "Response-side cases (U*): the upstream answers `GET /u` with the scripted bytes, then the "
             "client sends `GET /after`; `hang>upclose:` = no complete answer within 3 s, so the "
             "upstream closed that connection and the cell shows what followed; `same/new up-conn` = "
             "whether /after reused the upstream connection that carried the scripted bytes.", "",
             "Setup: one worker each, loopback. nginx: keepalive 16, proxy_http_version 1.1, "
             "Connection \"\", Host $host, default buffering and timeouts. HAProxy: mode http, "
             "http-keep-alive, timeout connect/client/server 5s. Weir: retries and outlier ejection "
             "off, default timeouts" + ("; listener: " + "; ".join(args.weir_listener) if args.weir_listener else "")
             + ".", "",
             "| case | bytes (short) | " + " | ".join(p.name for p in proxies) + " |",
             "|---|---|" + "---|" * len(proxies)]
    for case in cases:
        row = [case.id, esc(case.short)] + [esc(results[case.id][p.name]["cell"]) for p in proxies]
        lines.append("| " + " | ".join(row) + " |")
    md = "\n".join(lines) + "\n"
    sys.stdout.write(md)
    if args.out:
        with open(args.out, "w") as f:
            f.write(md)
    if args.json:
        def plain(o):
            if isinstance(o, bytes):
                return o[:2000].decode("latin-1")
            if isinstance(o, dict):
                return {k: plain(v) for k, v in o.items()}
            if isinstance(o, list):
                return [plain(v) for v in o]
            return o
        with open(args.json, "w") as f:
            json.dump(plain(results), f, indent=1)


if __name__ == "__main__":
    main()
