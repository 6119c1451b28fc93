#!/usr/bin/env python3
"""Cold start and AWS round trips of the release Lambda binaries, against the same job written
in Python (scripts/bench/coldstart/python_handler: twilio RequestValidator + Powertools
idempotency + boto3 SQS, run by the real runtime interface client `awslambdaric`).

    python3 scripts/bench/coldstart/run.py [--runs 20] [--warm 10] [--no-build] [--all-binaries]

Prints a markdown report and writes scripts/bench/coldstart/results.json.

The rig, all on 127.0.0.1:
- a minimal Lambda Runtime API emulator (http.server in a thread of this process): the event
  is queued before the exec, as in a real cold start; GET .../invocation/next hands it out,
  POST .../invocation/<id>/response (or /error, /init/error) records the time and the body;
- a counting reverse proxy that logs every AWS call by X-Amz-Target (or the query-protocol
  `Action=`) with its start and end time. During the cold starts it answers the store calls
  itself (`--cold-store local`, the default: a new item, an accepted message); for the round-trip
  counts it forwards to moto (ThreadedMotoServer) with the event table and work queues of
  scripts/local_aws.py plus a Powertools idempotency table (key `id`), so duplicates are really
  detected. Moto and the proxy run in a child process so their work does not hold this
  process's GIL while it stamps times.

Cold start = time from just before the exec (subprocess.Popen) of a fresh process to the moment
the emulator has read its first invocation response; the event is a NEW event each run (fresh
MessageSid, re-signed with the test token), so the path includes the DynamoDB PutItem and the
SQS SendMessage. Peak RSS = VmHWM of the process, read while it waits for the emulator's 202,
before it is killed. One warm-up run per implementation is discarded (page cache, .pyc).

Every reply must be a 200 with TwiML (<Response> root), else the script fails: the numbers are
of the real accept path, never of a 403/503.
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime
import hashlib
import http.client
import json
import math
import os
import platform
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
VENV = ROOT / "target" / "bench-venv"
REQUIREMENTS = HERE.parent / "requirements.txt"
HANDLER_DIR = HERE / "python_handler"
RESULTS = HERE / "results.json"
RELEASE = ROOT / "target" / "release"
BINARIES = ["sms-webhook", "voice-webhook", "status-callback", "fallback-webhook", "event-worker"]

TOKEN = "12345678901234567890123456789012"  # Twilio's documented test token; events/ are signed with it
REGION = "us-east-1"
ACCOUNT = "123456789012"
EVENT_TABLE = "twilio-events"
IDEMPOTENCY_TABLE = "python-idempotency"
INVOKE_TIMEOUT_S = 30.0
# Modules the harness and the Python handler import (distribution name -> import name).
PINNED = {"twilio": "twilio", "boto3": "boto3", "aws-lambda-powertools": "aws_lambda_powertools",
          "awslambdaric": "awslambdaric", "moto": "moto"}

TARGET_COLD_MS = 15.0
TARGET_RATIO = 30.0
TARGET_NEW_TRIPS = 2
TARGET_DUP_TRIPS = 1


class BenchError(SystemExit):
    """A failure that must stop the benchmark loudly (non-zero exit, message on stderr)."""

    def __init__(self, msg: str):
        super().__init__(f"\ncoldstart/run.py: FAILED: {msg}")


def log(msg: str) -> None:
    print(f"[coldstart] {msg}", file=sys.stderr, flush=True)


class QuietServer(ThreadingHTTPServer):
    """Threaded, daemon threads; a client that goes away (a killed function process) is normal."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- environment: a pinned venv in target/bench-venv ----------------------------------------------

def pins() -> dict[str, str]:
    """Pinned versions from scripts/bench/requirements.txt (`name[extras]==version`)."""
    out = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[name.split("[", 1)[0].strip().lower()] = version.strip()
    return out


def venv_ok() -> bool:
    py = VENV / "bin" / "python"
    if not py.exists():
        return False
    want = {k: v for k, v in pins().items() if k in PINNED}
    check = ("import importlib.metadata as m, json, sys; w = json.loads(sys.argv[1]);"
             "sys.exit(any(m.version(k) != v for k, v in w.items()))")
    return subprocess.run([str(py), "-c", check, json.dumps(want)],
                          capture_output=True).returncode == 0


def ensure_venv() -> None:
    missing = [k for k in PINNED if k not in pins()]
    if missing:
        raise BenchError(f"{REQUIREMENTS} does not pin {missing}")
    if venv_ok():
        return
    log(f"installing {REQUIREMENTS.relative_to(ROOT)} into {VENV.relative_to(ROOT)}")
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", "-r", str(REQUIREMENTS)], check=True)
    if not venv_ok():
        raise BenchError(f"{VENV} does not have the versions pinned in {REQUIREMENTS}")
    # The Python baseline gets its best case: every module precompiled (the child runs with
    # PYTHONDONTWRITEBYTECODE=1, so nothing is written into the tree).
    subprocess.run([str(VENV / "bin" / "python"), "-m", "compileall", "-q", "-j", "0",
                    str(VENV / "lib")], check=False, stdout=subprocess.DEVNULL)


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


# --- child process: moto + counting proxy -----------------------------------------------------------

def serve_aws() -> None:
    """`run.py --serve-aws`: moto + a counting reverse proxy; prints one JSON line with the
    endpoint and resource names, then serves until stdin closes."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log per request

    moto_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()

    calls: list[dict] = []
    mode = {"local": False}  # True: answer store calls in-process instead of forwarding to moto
    active: dict[int, dict] = {}
    calls_lock = threading.Lock()
    local = threading.local()
    hop = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
           "upgrade", "expect", "content-length"}

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

        def log_message(self, *a):  # quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response(status)
            for k, v in headers:
                if k.lower() not in hop:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _answer_locally(self, op: str, body: bytes) -> tuple[int, list, bytes]:
            """The store calls of a cold start for a new event, answered in-process as the
            issue asks ("store calls answered locally"): a new item is always new, a message
            is always accepted. Anything else is refused so a change of calls shows up."""
            ctype = [("Content-Type", "application/x-amz-json-1.0")]
            if op in ("DynamoDB_20120810.PutItem", "DynamoDB_20120810.UpdateItem"):
                return 200, ctype, b"{}"
            if op == "AmazonSQS.SendMessage":
                msg = json.loads(body)["MessageBody"].encode()
                reply = {"MessageId": str(uuid.uuid4()), "MD5OfMessageBody": hashlib.md5(msg).hexdigest()}
                return 200, ctype, json.dumps(reply).encode()
            err = {"__type": "com.amazon.coral.service#UnknownOperationException",
                   "message": f"the local store does not answer {op}"}
            return 400, ctype, json.dumps(err).encode()

        def _forward(self) -> None:
            start = time.monotonic_ns()
            body = self._body()
            if self.path.startswith("/__bench/local"):
                mode["local"] = self.path.endswith("on")
                self._send(200, [], b"")
                return
            if not self.path.startswith("/__bench/"):
                with calls_lock:
                    active[id(self)] = {"op": self.headers.get("X-Amz-Target") or self.path,
                                        "start_ns": start}
            if self.path.startswith("/__bench/active"):
                with calls_lock:
                    data = json.dumps(list(active.values())).encode()
                self._send(200, [("Content-Type", "application/json")], data)
                return
            if self.path.startswith("/__bench/calls"):
                with calls_lock:
                    data = json.dumps(calls).encode()
                self._send(200, [("Content-Type", "application/json")], data)
                return
            op = self.headers.get("X-Amz-Target")
            if not op:
                form = dict(parse_qsl(body.decode("utf-8", "replace"))) if body else {}
                query = dict(parse_qsl(self.path.partition("?")[2]))
                action = form.get("Action") or query.get("Action")
                op = f"Action={action}" if action else f"{self.command} {self.path}"
            if mode["local"]:
                status, resp_headers, data = self._answer_locally(op, body)
                end = time.monotonic_ns()
                with calls_lock:
                    active.pop(id(self), None)
                    calls.append({"op": op, "status": status, "start_ns": start, "end_ns": end})
                self._send(status, resp_headers, data)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
            for attempt in (0, 1):
                conn = getattr(local, "conn", None)
                if conn is None:
                    conn = local.conn = http.client.HTTPConnection("127.0.0.1", moto_port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    break
                except (http.client.HTTPException, OSError):
                    conn.close()
                    local.conn = None
                    if attempt:
                        raise
            end = time.monotonic_ns()
            with calls_lock:
                active.pop(id(self), None)
                calls.append({"op": op, "status": resp.status, "start_ns": start, "end_ns": end})
            self._send(resp.status, resp.getheaders(), data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

    proxy = QuietServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"

    # Resources, created through the proxy (so queue URLs name it) before any counting.
    kw = dict(endpoint_url=endpoint, region_name=REGION,
              aws_access_key_id="test", aws_secret_access_key="test")
    ddb, sqs = boto3.client("dynamodb", **kw), boto3.client("sqs", **kw)
    # Same design as template.yaml: one definition, in scripts/local_aws.py.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from local_aws import create_resources
    work = create_resources(ddb, sqs, EVENT_TABLE)
    # The Python baseline's Powertools idempotency table (its documented layout).
    ddb.create_table(
        TableName=IDEMPOTENCY_TABLE, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
    ddb.update_time_to_live(TableName=IDEMPOTENCY_TABLE, TimeToLiveSpecification={
        "Enabled": True, "AttributeName": "expiration"})

    print(json.dumps({"endpoint": endpoint, "queue_url": work}), flush=True)
    sys.stdin.read()  # until the harness exits
    proxy.shutdown()
    moto.stop()


class Aws:
    """The moto + proxy child process, seen from the harness."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-aws"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError("the moto/proxy child process did not start")
        info = json.loads(line)
        self.endpoint, self.queue_url = info["endpoint"], info["queue_url"]
        self.host, self.port = self.endpoint.removeprefix("http://").split(":")

    def answer_locally(self, on: bool) -> None:
        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=10)
        conn.request("GET", f"/__bench/local-{'on' if on else 'off'}")
        conn.getresponse().read()
        conn.close()

    def calls(self, which: str = "calls") -> list[dict]:
        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=10)
        conn.request("GET", f"/__bench/{which}")
        data = conn.getresponse().read()
        conn.close()
        return json.loads(data)

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()


# --- Lambda Runtime API emulator -------------------------------------------------------------------

def vm_status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])  # kB
    except OSError:
        pass
    try:  # minor page faults (field 10 of /proc/<pid>/stat, after the parenthesized name)
        out["minflt"] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
    except (OSError, IndexError, ValueError):
        pass
    cpu, seen = 0.0, False  # CPU time of all threads so far (se.sum_exec_runtime, ms, per thread)
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                for line in (task / "sched").read_text().splitlines():
                    if line.startswith("se.sum_exec_runtime"):
                        cpu += float(line.split(":", 1)[1])
                        seen = True
            except (OSError, ValueError):
                pass
    except OSError:
        pass
    if seen:
        out["cpu_ns"] = int(cpu * 1e6)
    return out


class Session:
    """One function process: its pending invocations and what it answered."""

    def __init__(self, function_name: str):
        self.function_name = function_name
        self.pid: int | None = None
        self.pid_set = threading.Event()
        self.pending: queue.Queue = queue.Queue()
        self.closed = False
        self.first_next_ns: int | None = None
        self.dispatched_ns: int | None = None
        self.results: dict[str, dict] = {}
        self.done: dict[str, threading.Event] = {}
        self.init_error: bytes | None = None
        self.init_failed = threading.Event()

    def queue_invocation(self, event: dict) -> str:
        request_id = str(uuid.uuid4())
        self.done[request_id] = threading.Event()
        self.pending.put((request_id, json.dumps(event).encode()))
        return request_id

    def finish(self, request_id: str, kind: str, body: bytes, t_ns: int, headers: dict) -> None:
        self.pid_set.wait(5)
        mem = vm_status(self.pid) if self.pid else {}
        self.results[request_id] = {"kind": kind, "body": body, "t_ns": t_ns, "mem": mem,
                                    "headers": headers}
        ev = self.done.get(request_id)
        if ev:
            ev.set()


class RuntimeApi:
    """The Runtime API of ONE function process: a server of its own per process, so that a
    request still in flight from a killed process can never take the next process's event."""

    PREFIX = "/2018-06-01/runtime"

    def __init__(self, session: Session):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms stall

            def log_message(self, *a):
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict | None = None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                session = api.session
                if self.path != f"{api.PREFIX}/invocation/next":
                    return self._reply(404, b'{"errorMessage":"not found"}')
                if session.first_next_ns is None:
                    session.first_next_ns = time.monotonic_ns()
                while True:
                    try:
                        request_id, payload = session.pending.get(timeout=0.2)
                        break
                    except queue.Empty:
                        if session.closed:
                            self.close_connection = True
                            return
                session.dispatched_ns = time.monotonic_ns()
                self._reply(200, payload, {
                    "Content-Type": "application/json",
                    "Lambda-Runtime-Aws-Request-Id": request_id,
                    "Lambda-Runtime-Deadline-Ms": str(int(time.time() * 1000) + 30_000),
                    "Lambda-Runtime-Invoked-Function-Arn":
                        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{session.function_name}",
                    "Lambda-Runtime-Trace-Id":
                        f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};"
                        f"Parent={uuid.uuid4().hex[:16]};Sampled=0",
                })

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                t = time.monotonic_ns()
                session = api.session
                parts = self.path.removeprefix(api.PREFIX).strip("/").split("/")
                if parts == ["init", "error"]:
                    session.init_error = body
                    session.init_failed.set()
                    return self._reply(202, b'{"status":"OK"}')
                if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    # Memory is read in finish(), while the process waits for this 202.
                    session.finish(parts[1], parts[2], body, t, dict(self.headers))
                    return self._reply(202, b'{"status":"OK"}')
                return self._reply(404, b'{"errorMessage":"not found"}')

        self.session = session
        self.server = QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# --- events ------------------------------------------------------------------------------------------

def signed_url(event: dict) -> str:
    """The URL Twilio signed for an API Gateway v2 event: https:// + Host + rawPath (+ ?query)."""
    url = "https://" + event["headers"]["host"] + event["rawPath"]
    if event.get("rawQueryString"):
        url += "?" + event["rawQueryString"]
    return url


def form_of(event: dict) -> list[tuple[str, str]]:
    body = event["body"]
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8")
    return parse_qsl(body, keep_blank_values=True)


class Events:
    def __init__(self):
        from twilio.request_validator import RequestValidator

        self.validator = RequestValidator(TOKEN)
        self.templates = {}
        for name in ("sms", "status-message"):
            ev = json.loads((ROOT / "events" / f"{name}.http-api.json").read_text())
            # The signing rule must reproduce the stored signature, else re-signing proves nothing.
            want = ev["headers"]["x-twilio-signature"]
            got = self.validator.compute_signature(signed_url(ev), dict(form_of(ev)))
            if got != want:
                raise BenchError(f"events/{name}.http-api.json: recomputed signature {got} != {want}"
                                 f" (URL rule {signed_url(ev)})")
            self.templates[name] = ev

    def fresh(self, name: str) -> dict:
        """A NEW event: the sample with a fresh MessageSid (and SmsSid), re-signed."""
        ev = copy.deepcopy(self.templates[name])
        sid = "SM" + uuid.uuid4().hex
        pairs = [(k, sid if k in ("MessageSid", "SmsSid", "SmsMessageSid") else v)
                 for k, v in form_of(ev)]
        body = urlencode(pairs)
        ev["body"] = base64.b64encode(body.encode()).decode() if ev.get("isBase64Encoded") else body
        ev["headers"]["x-twilio-signature"] = self.validator.compute_signature(signed_url(ev), dict(pairs))
        ev["headers"]["i-twilio-idempotency-token"] = str(uuid.uuid4())
        ev["requestContext"]["requestId"] = str(uuid.uuid4())
        ev["requestContext"]["timeEpoch"] = int(time.time() * 1000)
        return ev


def check_twiml(result: dict, what: str) -> str:
    """The invocation result must be an API Gateway v2 200 with a TwiML body; returns the body."""
    raw = result["body"]
    if result["kind"] != "response":
        raise BenchError(f"{what}: the function reported an invocation error: {raw[:2000]!r}")
    try:
        resp = json.loads(raw)
        status = resp.get("statusCode")
        headers = {k.lower(): v for k, v in (resp.get("headers") or {}).items()}
        for k, v in (resp.get("multiValueHeaders") or {}).items():
            headers.setdefault(k.lower(), v[0] if isinstance(v, list) and v else v)
        body = resp.get("body") or ""
        if resp.get("isBase64Encoded"):
            body = base64.b64decode(body).decode("utf-8")
    except Exception as e:
        raise BenchError(f"{what}: response is not an API Gateway JSON response ({e}): {raw[:2000]!r}")
    ctype = headers.get("content-type", "")
    try:
        root_tag = ET.fromstring(body).tag
    except ET.ParseError:
        root_tag = None
    if status != 200 or "xml" not in ctype or root_tag != "Response":
        raise BenchError(f"{what}: expected a 200 TwiML reply, got status={status} "
                         f"content-type={ctype!r} body={body[:500]!r}")
    return body


# --- functions under test -------------------------------------------------------------------------------

class Impl:
    def __init__(self, key: str, label: str):
        self.key, self.label = key, label

    def command(self, function: str) -> tuple[list[str], str, dict]:
        raise NotImplementedError


class RustImpl(Impl):
    def __init__(self):
        super().__init__("rust", "ours (Rust release binary)")

    def command(self, function):
        return [str(RELEASE / function)], str(ROOT), {}


class PythonImpl(Impl):
    def __init__(self):
        super().__init__("python", "Python (awslambdaric + Powertools + boto3)")

    def command(self, function):
        env = {"IDEMPOTENCY_TABLE": IDEMPOTENCY_TABLE, "LAMBDA_TASK_ROOT": str(HANDLER_DIR),
               "_HANDLER": "handler.lambda_handler", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONFAULTHANDLER": "1",  # a stack dump if the harness must abort a hung process
               "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11"}
        return ([str(VENV / "bin" / "python"), "-m", "awslambdaric", "handler.lambda_handler"],
                str(HANDLER_DIR), env)


class Rig:
    def __init__(self, aws: Aws, workdir: Path):
        self.aws, self.workdir = aws, workdir
        self.home = workdir / "home"
        self.home.mkdir(exist_ok=True)
        self.spawned = 0

    def env(self, function: str, runtime_api: str, extra: dict) -> dict:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.home),
            "AWS_LAMBDA_RUNTIME_API": runtime_api,
            "AWS_LAMBDA_FUNCTION_NAME": function,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"bench/[$LATEST]{uuid.uuid4().hex}",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL": self.aws.endpoint,
            "EVENT_TABLE": EVENT_TABLE, "WORK_QUEUE_URL": self.aws.queue_url,
            "TWILIO_AUTH_TOKEN": TOKEN,
            "LOG_FORMAT": "json", "RUST_LOG": "warn",
            "TLS_TRUST_STORE": "amazon",  # as template.yaml sets it (boto3 keeps certifi's bundle)
        }
        env.update(extra)
        return env

    def spawn(self, impl: Impl, function: str, first_event: dict) -> "Proc":
        argv, cwd, extra = impl.command(function)
        session = Session(function)
        request_id = session.queue_invocation(first_event)  # waiting before the exec, as in Lambda
        api = RuntimeApi(session)
        self.spawned += 1
        out = self.workdir / f"{self.spawned:03d}-{impl.key}-{function}.log"
        logf = open(out, "wb")
        t0 = time.monotonic_ns()
        popen = subprocess.Popen(argv, cwd=cwd, env=self.env(function, api.address, extra),
                                 stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
        session.pid = popen.pid
        session.pid_set.set()
        return Proc(self, impl, function, session, api, popen, logf, out, t0, request_id)


class Proc:
    def __init__(self, rig, impl, function, session, api, popen, logf, log_path, t0, first_id):
        self.rig, self.impl, self.function, self.api = rig, impl, function, api
        self.session, self.popen, self.logf, self.log_path = session, popen, logf, log_path
        self.t0, self.first_id = t0, first_id

    def fail(self, msg: str):
        s, now = self.session, time.monotonic_ns()
        ago = lambda t: "never" if t is None else f"{(now - t) / 1e6:.0f} ms ago"
        try:
            calls = self.rig.aws.calls()
            active = self.rig.aws.calls("active")
        except Exception as e:
            calls, active = [], [f"(proxy unreachable: {e})"]
        mine = [f"{c['op']} {c['status']} {(c['end_ns'] - c['start_ns']) / 1e6:.1f} ms"
                for c in calls if c["start_ns"] >= self.t0]
        msg += (f"\n  exec {ago(self.t0)}; first GET /next {ago(s.first_next_ns)}; event dispatched "
                f"{ago(s.dispatched_ns)}\n  AWS calls done since the exec: {mine}\n  "
                f"in flight at the proxy: {active}")
        if self.popen.poll() is None and self.impl.key == "python":
            self.popen.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER=1: every thread's stack
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise BenchError(f"{self.impl.label} {self.function}: {msg}\n--- process output "
                         f"({self.log_path}) ---\n{tail}")

    def wait(self, request_id: str) -> dict:
        deadline = time.monotonic() + INVOKE_TIMEOUT_S
        done = self.session.done[request_id]
        while not done.wait(0.01):
            if self.session.init_failed.is_set():
                self.fail(f"init error posted: {self.session.init_error[:2000]!r}")
            if self.popen.poll() is not None:
                self.fail(f"exited with code {self.popen.returncode} before answering")
            if time.monotonic() > deadline:
                self.fail(f"no answer in {INVOKE_TIMEOUT_S} s")
        return self.session.results[request_id]

    def invoke(self, event: dict) -> tuple[dict, int]:
        """Send one more invocation to this (warm) process; returns (result, queued_at_ns)."""
        queued = time.monotonic_ns()
        return self.wait(self.session.queue_invocation(event)), queued

    def kill(self):
        self.session.closed = True
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        if not self.logf.closed:
            self.logf.close()
            self.api.close()


# --- measurement ----------------------------------------------------------------------------------------

def calls_between(calls: list[dict], start_ns: int, end_ns: int) -> list[dict]:
    return [c for c in calls if c["start_ns"] >= start_ns and c["end_ns"] <= end_ns]


def sequential_depth(calls: list[dict]) -> int:
    """Longest chain of calls each starting after the previous one ended: the round trips that
    cannot overlap. Equals len(calls) when nothing ran concurrently."""
    calls = sorted(calls, key=lambda c: c["start_ns"])
    best = []
    for i, c in enumerate(calls):
        prior = [best[j] for j in range(i) if calls[j]["end_ns"] <= c["start_ns"]]
        best.append(1 + max(prior, default=0))
    return max(best, default=0)


def summarize_calls(calls: list[dict]) -> dict:
    return {"count": len(calls), "sequential": sequential_depth(calls),
            "ops": [c["op"] for c in sorted(calls, key=lambda c: c["start_ns"])],
            "aws_ms": sum(c["end_ns"] - c["start_ns"] for c in calls) / 1e6,
            "all_2xx": all(200 <= c["status"] < 300 for c in calls)}


def cold_run(rig: Rig, events: Events, impl: Impl) -> dict:
    proc = rig.spawn(impl, "sms-webhook", events.fresh("sms"))
    result = proc.wait(proc.first_id)
    proc.kill()
    check_twiml(result, f"{impl.label} cold start")
    s = proc.session
    calls = calls_between(rig.aws.calls(), proc.t0, result["t_ns"])
    c = summarize_calls(calls)
    if "DynamoDB_20120810.PutItem" not in c["ops"] or not any("SendMessage" in op for op in c["ops"]):
        raise BenchError(f"{impl.label} cold start: a new event must be stored and enqueued, "
                         f"the proxy saw {c['ops']}")
    total = (result["t_ns"] - proc.t0) / 1e6
    # Where the invocation's time went, relative to the dispatch of the event: the function's
    # own work is the gaps (before the first call, between calls, after the last one).
    d0 = s.dispatched_ns
    timeline = [{"op": x["op"], "start_ms": (x["start_ns"] - d0) / 1e6, "end_ms": (x["end_ns"] - d0) / 1e6}
                for x in sorted(calls, key=lambda x: x["start_ns"]) if x["start_ns"] >= d0]
    edges = [0.0] + [e for x in timeline for e in (x["start_ms"], x["end_ms"])] + [(result["t_ns"] - d0) / 1e6]
    gaps = [b - a for a, b in zip(edges[0::2], edges[1::2])]
    return {
        "total_ms": total,
        "init_ms": (s.first_next_ns - proc.t0) / 1e6 if s.first_next_ns else None,
        "invoke_ms": (result["t_ns"] - s.dispatched_ns) / 1e6,
        "aws_ms": c["aws_ms"],
        "total_minus_aws_ms": total - c["aws_ms"],
        "vmhwm_kb": result["mem"].get("VmHWM"),
        "vmrss_kb": result["mem"].get("VmRSS"),
        "cpu_ms": result["mem"]["cpu_ns"] / 1e6 if "cpu_ns" in result["mem"] else None,
        "minor_faults": result["mem"].get("minflt"),
        "calls": c["ops"],
        "invoke_before_first_call_ms": gaps[0],
        "invoke_between_calls_ms": sum(gaps[1:-1]),
        "invoke_after_last_call_ms": gaps[-1],
        "invoke_timeline": timeline,
    }


def warm_counts(rig: Rig, events: Events, impl: Impl, function: str, template: str,
                repeats: int) -> dict:
    """One process; first invocation (cold) then `repeats` x (new event, its duplicate)."""
    proc = rig.spawn(impl, function, events.fresh(template))
    try:
        first = proc.wait(proc.first_id)
        check_twiml(first, f"{impl.label} {function} first invocation")
        out = {"first_cold": summarize_calls(calls_between(rig.aws.calls(), proc.t0, first["t_ns"])),
               "new": [], "duplicate": []}
        for i in range(repeats):
            event = events.fresh(template)
            for kind, ev in (("new", event), ("duplicate", event)):
                result, queued = proc.invoke(ev)
                body = check_twiml(result, f"{impl.label} {function} warm {kind} #{i + 1}")
                c = summarize_calls(calls_between(rig.aws.calls(), queued, result["t_ns"]))
                c["latency_ms"] = (result["t_ns"] - queued) / 1e6
                c["reply"] = body
                out[kind].append(c)
        mem = vm_status(proc.popen.pid)
    finally:
        proc.kill()
    out["vmhwm_kb_after"] = mem.get("VmHWM")
    for kind in ("new", "duplicate"):
        runs = out[kind]
        out[kind + "_summary"] = {
            "count": sorted({r["count"] for r in runs}),
            "sequential": sorted({r["sequential"] for r in runs}),
            "ops": sorted({" → ".join(r["ops"]) for r in runs}),
            "latency_ms_median": median([r["latency_ms"] for r in runs]),
            "aws_ms_median": median([r["aws_ms"] for r in runs]),
        }
    return out


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def p90(xs):
    """Nearest-rank 90th percentile."""
    xs = sorted(x for x in xs if x is not None)
    return xs[max(0, math.ceil(0.9 * len(xs)) - 1)] if xs else None


# --- build, sizes, environment ---------------------------------------------------------------------------

def build(all_binaries: bool) -> None:
    pkgs = BINARIES if all_binaries else ["sms-webhook", "status-callback"]
    cmd = ["cargo", "build", "--release"] + [a for p in pkgs for a in ("-p", p)]
    log("$ " + " ".join(cmd) + "   (a no-op when up to date; fat LTO otherwise: minutes)")
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise BenchError("release build failed")


def binary_info() -> dict:
    out = {}
    for name in BINARIES:
        p = RELEASE / name
        if p.exists():
            st = p.stat()
            out[name] = {"bytes": st.st_size,
                         "built": datetime.datetime.fromtimestamp(st.st_mtime).isoformat(timespec="seconds")}
        else:
            out[name] = None
    return out


def git(*args) -> str:
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip()


def environment() -> dict:
    import importlib.metadata as md

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu, "nproc": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {k: md.version(k) for k in PINNED},
        "rustc": subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip(),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty_files": [l for l in git("status", "--porcelain").splitlines()
                            if l[3:].startswith(("shared/", "functions/", "Cargo."))],
    }


# --- report --------------------------------------------------------------------------------------------------

def fmt(x, unit="", digits=1):
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}{unit}"


def mib(kb):
    return None if kb is None else kb / 1024


def report(res: dict) -> str:
    cold = res["cold_start"]
    r, p = cold["rust"]["summary"], cold.get("python", {}).get("summary")
    lines = []
    env = res["environment"]
    lines.append(f"## Cold start: exec → first answered invocation ({res['params']['runs']} runs each, "
                 f"new SMS event per run)\n")
    busy = float(res["load_before"].split()[0]) > 0.5 * (env["nproc"] or 1)
    lines.append(f"Machine: {env['nproc']} cores, {env['cpu']}; load average {res['load_before']} before, "
                 f"{res['load_after']} after" + (" (busy: other work was running, numbers are "
                                                  "pessimistic)" if busy else "") + ".\n")
    head = "| | ours: `sms-webhook` (Rust) | Python (awslambdaric) | Python / ours |"
    lines += [head, "|---|---|---|---|"]

    def row(name, key, conv=lambda v: v, unit=" ms", digits=1, ratio=True):
        rv = conv(r[key]) if r.get(key) is not None else None
        pv = conv(p[key]) if p and p.get(key) is not None else None
        rt = f"{pv / rv:.1f}×" if ratio and rv and pv else ""
        lines.append(f"| {name} | {fmt(rv, unit, digits)} | {fmt(pv, unit, digits)} | {rt} |")

    row("**exec → response, median**", "total_ms_median")
    row("exec → response, p90", "total_ms_p90")
    row("exec → response, min", "total_ms_min")
    row("of which init (exec → first `/next`), median", "init_ms_median")
    row("of which the invocation (`/next` → response), median", "invoke_ms_median")
    who = ("answered in the proxy" if res["params"].get("cold_store") == "local"
           else "moto via proxy")
    row(f"local AWS time inside ({who}), median", "aws_ms_median", ratio=False)
    row("&nbsp;&nbsp;invocation: event → first AWS call, median", "invoke_before_first_call_ms_median")
    row("&nbsp;&nbsp;invocation: between AWS calls, median", "invoke_between_calls_ms_median")
    row("&nbsp;&nbsp;invocation: last AWS call → response, median", "invoke_after_last_call_ms_median")
    row("exec → response minus local AWS time, median", "total_minus_aws_ms_median")
    row("CPU time of the process (all threads) until the response, median", "cpu_ms_median")
    row("peak RSS (VmHWM), median", "vmhwm_kb_median", conv=mib, unit=" MiB")
    row("minor page faults until the response, median", "minor_faults_median", unit="", digits=0)
    calls = [" / ".join(x["calls"]).replace("DynamoDB_20120810.", "").replace("AmazonSQS.", "SQS.")
             if x else "n/a" for x in (r, p)]
    lines.append(f"| AWS calls in the cold invocation | {calls[0]} | {calls[1]} | |")
    lines.append("")
    t = res["targets"]
    lines.append(f"Targets: ours ≤ {TARGET_COLD_MS:g} ms: **{t['cold_ms']}** on exec → response "
                 f"({fmt(r['total_ms_median'], ' ms')}), **{t['cold_ms_minus_aws']}** once the local "
                 f"AWS time is taken out ({fmt(r['total_minus_aws_ms_median'], ' ms')}). "
                 f"≥ {TARGET_RATIO:g}× faster than Python: **{t['ratio']}** on exec → response "
                 f"({fmt(t['ratio_value'], '×')}), **{t['ratio_minus_aws']}** without the local AWS "
                 f"time ({fmt(t['ratio_minus_aws_value'], '×')}); init alone: "
                 f"{fmt(t['ratio_init_value'], '×')}.\n")
    if res["params"].get("cold_store") == "local":
        lines.append("Store calls of the cold start are answered by the proxy itself, in-process "
                     "(PutItem/UpdateItem: `{}`, a new item; SendMessage: a MessageId with the "
                     "body's MD5), the same for both implementations. Local AWS time = the sum "
                     "of the calls' durations measured inside the proxy.\n")
    else:
        lines.append("Local AWS time = the sum of the calls' durations measured inside the counting "
                     "proxy (moto's work; TCP connects and the proxy's thread start are not in it, "
                     "so the \"minus\" rows are upper bounds of the functions' own time).\n")

    lines.append("## AWS round trips per request (warm process, counted at the proxy)\n")
    lines.append("| request | ours: calls (sequential) | Python: calls (sequential) | ours warm latency | Python warm latency |")
    lines.append("|---|---|---|---|---|")
    trips = res["round_trips"]
    for label, fn, kind in (("new SMS", "sms", "new"), ("duplicate SMS", "sms", "duplicate"),
                            ("new message status callback", "status", "new"),
                            ("duplicate status callback", "status", "duplicate")):
        cells = []
        lat = []
        for impl in ("rust", "python"):
            d = trips.get(impl, {}).get(fn)
            if not d:
                cells.append("n/a")
                lat.append("n/a")
                continue
            s = d[kind + "_summary"]
            count = "/".join(map(str, s["count"]))
            seq = "/".join(map(str, s["sequential"]))
            ops = "; ".join(o.replace("DynamoDB_20120810.", "").replace("AmazonSQS.", "SQS.")
                            for o in s["ops"])
            cells.append(f"**{count}** ({seq}): {ops}")
            lat.append(fmt(s["latency_ms_median"], " ms"))
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {lat[0]} | {lat[1]} |")
    lines.append("")
    lines.append(f"Targets: new ≤ {TARGET_NEW_TRIPS} → **{t['new_trips']}**; "
                 f"duplicate = {TARGET_DUP_TRIPS} → **{t['dup_trips']}**. "
                 "Warm latency = dispatch → response, median, moto's own time included.\n")

    lines.append("## Release binary sizes (`target/release`, stripped, fat LTO)\n")
    lines.append("| binary | size | built |")
    lines.append("|---|---|---|")
    for name, info in res["binaries"].items():
        if info:
            lines.append(f"| `{name}` | {info['bytes'] / 2**20:.2f} MiB ({info['bytes']:,} B) | {info['built']} |")
        else:
            lines.append(f"| `{name}` | not built (`--all-binaries` builds it) | |")
    return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


# --- main ------------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="cold starts per implementation (default 20)")
    ap.add_argument("--warm", type=int, default=10,
                    help="new+duplicate pairs per warm process for the round-trip count (default 10)")
    ap.add_argument("--no-build", action="store_true", help="use target/release as it is")
    ap.add_argument("--all-binaries", action="store_true", help="also build the other three functions")
    ap.add_argument("--skip-python", action="store_true", help="only measure ours")
    ap.add_argument("--cold-store", choices=("local", "moto"), default="local",
                    help="who answers the cold start's store calls: the proxy itself (default, "
                         "as the issue asks) or moto behind it")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--serve-aws", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.serve_aws:
        return serve_aws()
    if not in_venv():
        ensure_venv()
        os.execv(str(VENV / "bin" / "python"),
                 [str(VENV / "bin" / "python"), str(Path(__file__).resolve()), *sys.argv[1:]])
    ensure_venv()

    if not args.no_build:
        build(args.all_binaries)
    for name in ("sms-webhook", "status-callback"):
        if not (RELEASE / name).exists():
            raise BenchError(f"{RELEASE / name} is missing (cargo build --release -p {name})")

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        log(f"the machine is busy (load average {load_before}): timings will be pessimistic")
    workdir = Path(tempfile.mkdtemp(prefix="coldstart-"))
    aws = Aws()
    impls = [RustImpl()] + ([] if args.skip_python else [PythonImpl()])
    res: dict = {"params": {"runs": args.runs, "warm": args.warm, "cold_store": args.cold_store,
                            "p90": "nearest rank", "clock": "CLOCK_MONOTONIC"},
                 "environment": environment(), "binaries": binary_info(),
                 "load_before": load_before, "cold_start": {}, "round_trips": {}}
    try:
        rig, events = Rig(aws, workdir), Events()

        # Cold starts: one discarded warm-up each, then interleaved runs so that machine noise
        # falls on both alike.
        aws.answer_locally(args.cold_store == "local")
        samples = {i.key: [] for i in impls}
        for impl in impls:
            log(f"warm-up: {impl.label}")
            cold_run(rig, events, impl)
        for n in range(args.runs):
            for impl in impls:
                samples[impl.key].append(cold_run(rig, events, impl))
            log(f"cold run {n + 1}/{args.runs}: " + ", ".join(
                f"{k} {v[-1]['total_ms']:.1f} ms" for k, v in samples.items()))
        for impl in impls:
            runs = samples[impl.key]
            summary = {}
            for key in ("total_ms", "init_ms", "invoke_ms", "aws_ms", "total_minus_aws_ms", "vmhwm_kb",
                        "cpu_ms", "minor_faults",
                        "invoke_before_first_call_ms", "invoke_between_calls_ms",
                        "invoke_after_last_call_ms"):
                vals = [r[key] for r in runs]
                summary[key + "_median"] = median(vals)
                summary[key + "_p90"] = p90(vals)
                summary[key + "_min"] = min((v for v in vals if v is not None), default=None)
            summary["calls"] = sorted({" → ".join(r["calls"]) for r in runs})
            res["cold_start"][impl.key] = {"label": impl.label, "summary": summary, "runs": runs}

        # Round trips on warm processes, against moto: duplicates must really be detected.
        aws.answer_locally(False)
        for impl in impls:
            res["round_trips"][impl.key] = {}
            for fn, function, template in (("sms", "sms-webhook", "sms"),
                                           ("status", "status-callback", "status-message")):
                log(f"round trips: {impl.label} {function}")
                d = warm_counts(rig, events, impl, function, template, args.warm)
                for kind in ("new", "duplicate"):
                    for r in d[kind]:
                        r.pop("reply", None)
                res["round_trips"][impl.key][fn] = d
    finally:
        aws.close()

    res["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rs = res["cold_start"]["rust"]["summary"]
    ps = res["cold_start"].get("python", {}).get("summary")
    rt = res["round_trips"]["rust"]
    new_max = max(max(rt[f]["new_summary"]["sequential"]) for f in ("sms", "status"))
    dup = {s for f in ("sms", "status") for s in rt[f]["duplicate_summary"]["sequential"]}
    def ratio_of(key):
        return ps[key] / rs[key] if ps and ps.get(key) and rs.get(key) else None

    ratio, ratio_minus = ratio_of("total_ms_median"), ratio_of("total_minus_aws_ms_median")
    res["targets"] = {
        "cold_ms": verdict(rs["total_ms_median"] <= TARGET_COLD_MS),
        "cold_ms_minus_aws": verdict(rs["total_minus_aws_ms_median"] <= TARGET_COLD_MS),
        "ratio": verdict(None if ratio is None else ratio >= TARGET_RATIO),
        "ratio_value": ratio,
        "ratio_minus_aws": verdict(None if ratio_minus is None else ratio_minus >= TARGET_RATIO),
        "ratio_minus_aws_value": ratio_minus,
        "ratio_init_value": ratio_of("init_ms_median"),
        "new_trips": verdict(new_max <= TARGET_NEW_TRIPS),
        "dup_trips": verdict(dup == {TARGET_DUP_TRIPS}),
    }
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(report(res))
    print(f"\nRaw data: {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}; "
          f"process logs: {workdir}")
    shutil.rmtree(workdir / "home", ignore_errors=True)


if __name__ == "__main__":
    main()
