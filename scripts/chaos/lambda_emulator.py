"""A small Lambda Runtime API emulator that runs the real function binaries as processes.

Each function has a pool of execution environments (`Instance`): one process, its own Runtime
API server and its own fault proxy (so a proxy knows which process is calling and can kill it).
Environments start cold on demand, like Lambda, up to a cap; one invocation at a time each.

Runtime API served per environment (https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html):
  GET  /2018-06-01/runtime/invocation/next
  POST /2018-06-01/runtime/invocation/{id}/response
  POST /2018-06-01/runtime/invocation/{id}/error
  POST /2018-06-01/runtime/init/error

An invocation ends `ok` (the runtime posted a response), `error` (posted an error), `died`
(the process exited or was killed during it), `timeout` (the function timeout passed: the
process is killed, as Lambda resets the environment) or `init_failed`.
"""
import http.server
import json
import os
import queue
import signal
import socket
import socketserver
import subprocess
import threading
import time
import uuid

RUNTIME_PREFIX = "/2018-06-01/runtime"


def read_body(handler) -> bytes:
    """The request body of a BaseHTTPRequestHandler: Content-Length or chunked."""
    te = (handler.headers.get("Transfer-Encoding") or "").lower()
    if "chunked" in te:
        out = bytearray()
        while True:
            line = handler.rfile.readline(65537)
            if not line:
                break
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # trailers until the empty line
                while True:
                    t = handler.rfile.readline(65537)
                    if t in (b"\r\n", b"\n", b""):
                        break
                break
            out += handler.rfile.read(size)
            handler.rfile.readline(65537)  # CRLF after the chunk
        return bytes(out)
    n = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(n) if n else b""


def reset_connection(handler):
    """Close the client connection with a TCP RST (SO_LINGER 0), as a crashed peer would."""
    try:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    handler.close_connection = True
    try:
        handler.connection.close()
    except OSError:
        pass


class QuietServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        pass  # broken pipes and resets are expected here


class Invocation:
    def __init__(self, function: str, payload: bytes, timeout_s: float, kill_plan=None, tag=None):
        self.request_id = str(uuid.uuid4())
        self.function = function
        self.payload = payload
        self.timeout_s = timeout_s
        # None, or {"call": k, "phase": "before"|"after"}: kill the process at its k-th AWS
        # call (before forwarding it to moto, or after moto answered, before the answer is
        # returned). When the invocation makes fewer calls, the kill happens when its response
        # arrives (after all its calls, before Lambda returns the result).
        self.kill_plan = kill_plan
        self.tag = tag
        self.calls = 0
        self.started = threading.Event()
        self.done = threading.Event()
        self.outcome = None
        self.body = None
        self.kill = None  # where the kill happened, when it did
        self.instance = None
        self.t_submit = time.time()
        self.t_start = None
        self.t_end = None
        self._lock = threading.Lock()

    def finish(self, outcome: str, body=None) -> bool:
        with self._lock:
            if self.done.is_set():
                return False
            self.outcome, self.body = outcome, body
            self.t_end = time.time()
            self.done.set()
            return True

    def summary(self) -> dict:
        return {
            "request_id": self.request_id, "function": self.function,
            "instance": self.instance.name if self.instance else None,
            "outcome": self.outcome, "kill": self.kill, "calls": self.calls, "tag": self.tag,
            "t_submit": self.t_submit, "t_start": self.t_start, "t_end": self.t_end,
            "error": (self.body or b"")[:400].decode("utf-8", "replace") if self.outcome == "error" else None,
        }


class RuntimeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, status: int, body: bytes = b"", headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self):
        inst: "Instance" = self.server.instance
        if self.path != RUNTIME_PREFIX + "/invocation/next":
            return self._reply(404, b'{"errorMessage":"unknown path"}')
        inv = inst.next_invocation()
        if inv is None:  # the environment is going away
            return reset_connection(self)
        deadline = int((inv.t_start + inv.timeout_s) * 1000)
        self._reply(200, inv.payload, {
            "Lambda-Runtime-Aws-Request-Id": inv.request_id,
            "Lambda-Runtime-Deadline-Ms": str(deadline),
            "Lambda-Runtime-Invoked-Function-Arn":
                f"arn:aws:lambda:us-east-1:123456789012:function:{inst.pool.name}",
            "Lambda-Runtime-Trace-Id":
                f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0",
        })

    def do_POST(self):
        inst: "Instance" = self.server.instance
        body = read_body(self)
        path = self.path
        if path == RUNTIME_PREFIX + "/init/error":
            inst.on_init_error(body)
            return self._reply(202, b'{"status":"OK"}')
        parts = path[len(RUNTIME_PREFIX):].strip("/").split("/")
        if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
            accepted = inst.on_result(parts[1], parts[2], body)
            if accepted is None:  # killed instead of answered
                return reset_connection(self)
            return self._reply(202, b'{"status":"OK"}')
        self._reply(404, b'{"errorMessage":"unknown path"}')


class Instance:
    """One execution environment: a process of the function binary with its own Runtime API
    server and fault proxy."""

    def __init__(self, pool: "FunctionPool", index: int):
        self.pool = pool
        self.index = index
        self.name = f"{pool.name}#{index}"
        self.mailbox: "queue.Queue[Invocation]" = queue.Queue()
        self.current = None
        self.alive = True
        self.init_error = None
        self.kill_reason = None
        self.invocations = 0
        self._lock = threading.Lock()
        self.runtime = QuietServer(("127.0.0.1", 0), RuntimeHandler)
        self.runtime.instance = self
        threading.Thread(target=self.runtime.serve_forever, kwargs={"poll_interval": 0.2},
                         daemon=True, name=f"rt-{self.name}").start()
        self.proxy = pool.proxy_factory(self) if pool.proxy_factory else None
        env = dict(pool.env)
        env.update(pool.env_for_instance(self) if pool.env_for_instance else {})
        env["AWS_LAMBDA_RUNTIME_API"] = f"127.0.0.1:{self.runtime.server_address[1]}"
        env["AWS_LAMBDA_LOG_STREAM_NAME"] = f"2026/01/01/[$LATEST]{uuid.uuid4().hex}"
        if self.proxy is not None:
            env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{self.proxy.server_address[1]}"
        self.log_path = os.path.join(pool.log_dir, f"{pool.name}.{index}.log")
        self.log = open(self.log_path, "ab", buffering=0)
        self.t_spawn = time.time()
        self.proc = subprocess.Popen([pool.binary], env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        threading.Thread(target=self._monitor, daemon=True, name=f"mon-{self.name}").start()

    # --- called by the Runtime API handler -------------------------------------------------
    def next_invocation(self):
        while True:
            if not self.alive:
                return None
            try:
                inv = self.mailbox.get(timeout=0.25)
            except queue.Empty:
                continue
            with self._lock:
                if not self.alive:
                    inv.finish("died")
                    return None
                inv.t_start = time.time()
                self.current = inv
            inv.started.set()
            return inv

    def on_result(self, request_id: str, kind: str, body: bytes):
        with self._lock:
            inv = self.current
            if inv is None or inv.request_id != request_id:
                return True  # a late answer to an invocation already ended: ignored
            if inv.kill_plan and inv.kill is None:
                # The planned kill point was never reached: die after all the calls, before
                # the result reaches the caller.
                inv.kill = {"call": inv.calls, "phase": "response"}
                self._kill_locked("planned kill at response")
                return None
            self.current = None
        inv.finish("ok" if kind == "response" else "error", body)
        return True

    def on_init_error(self, body: bytes):
        self.init_error = body.decode("utf-8", "replace")
        self.pool.harness_note(f"{self.name}: init error {self.init_error[:300]}")

    # --- called by the fault proxy ---------------------------------------------------------
    def begin_call(self):
        """Count an AWS call of the current invocation; returns (invocation, call number)."""
        with self._lock:
            inv = self.current
            if inv is None:
                return None, 0
            inv.calls += 1
            return inv, inv.calls

    def kill(self, reason: str):
        with self._lock:
            self._kill_locked(reason)

    def _kill_locked(self, reason: str):
        if self.kill_reason is None:
            self.kill_reason = reason
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # --- lifecycle ---------------------------------------------------------------------------
    def _monitor(self):
        rc = self.proc.wait()
        with self._lock:
            self.alive = False
            inv, self.current = self.current, None
        if inv is not None:
            inv.finish("died")
        while True:  # invocations handed to this environment but never started
            try:
                self.mailbox.get_nowait().finish("init_failed" if self.init_error else "died")
            except queue.Empty:
                break
        self.pool.on_exit(self, rc)
        for server in (self.runtime, self.proxy):
            if server is not None:
                threading.Thread(target=self._close_server, args=(server,), daemon=True).start()
        self.log.close()

    @staticmethod
    def _close_server(server):
        try:
            server.shutdown()
            server.server_close()
        except Exception:
            pass

    def stop(self):
        self.kill("harness shutdown")


class FunctionPool:
    """The execution environments of one function; `invoke` is a synchronous invocation."""

    def __init__(self, name, binary, env, timeout_s, max_instances, log_dir, rng,
                 kill_rate=0.0, kill_calls=2, proxy_factory=None, env_for_instance=None,
                 init_timeout_s=10.0, note=None):
        self.name = name
        self.binary = binary
        self.env = env
        self.timeout_s = timeout_s
        self.max_instances = max_instances
        self.log_dir = log_dir
        self.rng = rng
        self.kill_rate = kill_rate
        self.kill_calls = kill_calls
        self.proxy_factory = proxy_factory
        self.env_for_instance = env_for_instance
        self.init_timeout_s = init_timeout_s
        self._note = note
        self.instances = []
        self.idle = []
        self.cond = threading.Condition()
        self.next_index = 0
        self.closed = False
        self.cold_starts = 0
        self.exits = []  # (instance name, return code, kill reason)
        self.init_failures = 0
        self.ok_invocations = 0
        self.last_init_error = None
        self.invocations = []

    def harness_note(self, msg):
        if self._note:
            self._note(msg)

    def _acquire(self) -> Instance:
        with self.cond:
            while True:
                if self.closed:
                    raise RuntimeError("pool closed")
                while self.idle:
                    inst = self.idle.pop()
                    if inst.alive:
                        return inst
                if len(self.instances) < self.max_instances:
                    inst = Instance(self, self.next_index)
                    self.next_index += 1
                    self.cold_starts += 1
                    self.instances.append(inst)
                    return inst
                self.cond.wait(0.5)

    def _release(self, inst: Instance):
        with self.cond:
            if inst.alive and not self.closed:
                self.idle.append(inst)
            self.cond.notify()

    def on_exit(self, inst: Instance, rc: int):
        with self.cond:
            if inst in self.instances:
                self.instances.remove(inst)
            if inst in self.idle:
                self.idle.remove(inst)
            self.exits.append((inst.name, rc, inst.kill_reason))
            self.cond.notify_all()

    def plan_kill(self):
        with self.cond:
            if self.kill_rate <= 0 or self.rng.random() >= self.kill_rate:
                return None
            return {"call": self.rng.randint(1, max(1, self.kill_calls)),
                    "phase": self.rng.choice(["before", "after"])}

    def invoke(self, payload: bytes, tag=None, allow_kill=True) -> Invocation:
        inst = self._acquire()
        inv = Invocation(self.name, payload, self.timeout_s,
                         self.plan_kill() if allow_kill else None, tag)
        inv.instance = inst
        inst.invocations += 1
        inst.mailbox.put(inv)
        start_by = time.time() + (self.init_timeout_s if inst.invocations == 1 else 5.0)
        while not inv.started.is_set() and not inv.done.is_set() and time.time() < start_by:
            inv.started.wait(0.05)
        if not inv.started.is_set():
            if inv.finish("init_failed"):
                inst.kill("no /next within the init timeout")
        elif not inv.done.wait(self.timeout_s):
            if inv.finish("timeout"):
                inst.kill(f"function timeout ({self.timeout_s:g} s)")
        inv.done.wait()
        self._release(inst)
        with self.cond:
            self.invocations.append(inv.summary())
            if inv.outcome == "ok":
                self.ok_invocations += 1
            elif inv.outcome == "init_failed" or (inv.outcome == "died" and inv.t_start is None):
                self.init_failures += 1
                self.last_init_error = inst.init_error or tail(inst.log_path) or self.last_init_error
        return inv

    def close(self):
        with self.cond:
            self.closed = True
            insts = list(self.instances)
            self.cond.notify_all()
        for inst in insts:
            inst.stop()
        deadline = time.time() + 5
        for inst in insts:
            try:
                inst.proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass


def tail(path, n=600) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def http_response_of(inv: Invocation):
    """(status, body text) of a webhook invocation as API Gateway would answer Twilio: a
    function error, crash or timeout is a 502/504."""
    if inv.outcome == "timeout":
        return 504, "Endpoint request timed out"
    if inv.outcome != "ok":
        return 502, f"Internal Server Error ({inv.outcome})"
    try:
        r = json.loads(inv.body or b"{}")
        return int(r.get("statusCode", 200)), r.get("body") or ""
    except (ValueError, TypeError):
        return 502, "malformed Lambda proxy response"
