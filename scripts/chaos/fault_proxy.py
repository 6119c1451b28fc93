"""The fault proxy between one function process and moto (`AWS_ENDPOINT_URL` of that process).

Each call is forwarded to moto unless a fault or a kill is drawn for it. Faults (at
`rate` per eligible call, the kind drawn from `mix`):

  throttle      400 ThrottlingException / ProvisionedThroughputExceededException (DynamoDB),
                400 RequestThrottled / ThrottlingException (SQS JSON protocol); nothing forwarded
  server_error  500 InternalServerError (DynamoDB) / 500 InternalError (SQS); nothing forwarded
  timeout       the call stalls longer than the SDK's 2 s attempt timeout; nothing forwarded
  reset         the connection is reset (TCP RST) after the request was read; nothing forwarded
  lost_answer   forwarded, moto applied it, then the answer is lost: reset, 500, or a stall

Kills: when the calling invocation's kill plan names this call, the process is SIGKILLed
before the call is forwarded (`before`) or after moto answered and before the answer is
returned (`after`).

Every call is traced (op, key, attempt, fault, kill, moto's status and error type) so the
checker can explain what happened to any event.
"""
import collections
import http.client
import http.server
import json
import random
import threading
import time

from lambda_emulator import QuietServer, read_body, reset_connection

FAULT_KINDS = ("throttle", "server_error", "timeout", "reset", "lost_answer")
DEFAULT_MIX = {"throttle": 0.2, "server_error": 0.2, "timeout": 0.15, "reset": 0.15, "lost_answer": 0.3}
WEBHOOK_FAULT_OPS = {"DynamoDB.PutItem", "SQS.SendMessage"}
# moto answers requests on many threads, and its conditional writes are not atomic (the
# condition is evaluated, then the item written, with the GIL free to switch in between): two
# concurrent conditional writes could both succeed and blame the code under test. Every call
# that reaches moto from the functions or from the harness's own SQS polling goes through this
# lock, so moto applies them one at a time, as DynamoDB serialises writes to one item.
MOTO_LOCK = threading.Lock()
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date",
              "proxy-connection", "te", "trailer", "upgrade"}


class FaultConfig:
    def __init__(self, rate: float, seed, mix=None, stall_s: float = 3.0):
        self.rate = rate
        self.seed = seed
        mix = dict(mix or DEFAULT_MIX)
        total = sum(mix.values())
        self.mix = [(k, v / total) for k, v in mix.items() if v > 0]
        self.stall_s = stall_s
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.calls = collections.Counter()
        self.trace = []

    def eligible(self, function: str, op: str) -> bool:
        if function == "event-worker":
            return True
        return op in WEBHOOK_FAULT_OPS

    def draw(self, rng: random.Random):
        if self.rate <= 0 or rng.random() >= self.rate:
            return None
        x = rng.random()
        for kind, w in self.mix:
            if x < w:
                return kind
            x -= w
        return self.mix[-1][0]

    def record(self, entry: dict):
        with self.lock:
            self.trace.append(entry)
            self.calls[(entry["fn"], entry["op"])] += 1
            if entry.get("fault"):
                self.counts[entry["fault"]] += 1
                if entry.get("sub"):
                    self.counts[f"{entry['fault']}:{entry['sub']}"] += 1


def operation(headers) -> str:
    target = headers.get("X-Amz-Target") or ""
    if target.startswith("DynamoDB_"):
        return "DynamoDB." + target.split(".", 1)[1]
    if target.startswith("AmazonSQS."):
        return "SQS." + target.split(".", 1)[1]
    return target or "unknown"


def key_of(op: str, req: dict):
    """(event or state key, attempt id) named by a request."""
    try:
        if op == "DynamoDB.PutItem":
            item = req.get("Item", {})
            return item.get("pk", {}).get("S"), item.get("attempt", {}).get("S")
        if op in ("DynamoDB.UpdateItem", "DynamoDB.GetItem", "DynamoDB.DeleteItem"):
            attempt = (req.get("ExpressionAttributeValues") or {}).get(":a", {}).get("S")
            return req.get("Key", {}).get("pk", {}).get("S"), attempt
        if op == "SQS.SendMessage":
            return json.loads(req.get("MessageBody", "{}"))["event"]["key"], None
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return None, None


def error_body(service: str, kind: str, rng: random.Random):
    """(status, headers, body) of an injected AWS error."""
    if service == "DynamoDB":
        ns = "com.amazonaws.dynamodb.v20120810#"
        if kind == "throttle":
            name = rng.choice(["ThrottlingException", "ProvisionedThroughputExceededException"])
            status, msg = 400, "Rate of requests exceeds the allowed throughput."
        else:
            name, status, msg = "InternalServerError", 500, "Internal server error"
        return status, {"Content-Type": "application/x-amz-json-1.0"}, \
            json.dumps({"__type": ns + name, "message": msg}).encode()
    if kind == "throttle":
        name = rng.choice(["RequestThrottled", "ThrottlingException"])
        status, msg, fault = 400, "Request is throttled.", "Sender"
    else:
        name, status, msg, fault = "InternalError", 500, "We encountered an internal error.", "Receiver"
    # awsQueryCompatible: the SDK takes the error code from this header. Throttling codes are
    # plain ("RequestThrottled" is SQS's modelled error); only SQS-specific errors such as
    # "AWS.SimpleQueueService.NonExistentQueue" carry the prefix.
    return status, {"Content-Type": "application/x-amz-json-1.0",
                    "x-amzn-query-error": f"{name};{fault}"}, \
        json.dumps({"__type": "com.amazonaws.sqs#" + name, "message": msg}).encode()


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.do_POST()

    def do_POST(self):
        srv: FaultProxy = self.server
        inst = srv.instance
        cfg = srv.config
        body = read_body(self)
        op = operation(self.headers)
        service = op.split(".", 1)[0]
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            req = {}
        key, attempt = key_of(op, req)
        inv, call_no = inst.begin_call()
        with srv.rng_lock:
            fault = cfg.draw(srv.rng) if cfg.eligible(inst.pool.name, op) else None
            sub = srv.rng.choice(["reset", "500", "stall"]) if fault == "lost_answer" else None
            err = error_body(service, fault, srv.rng) if fault in ("throttle", "server_error") else None
        kill = None
        if inv is not None and inv.kill_plan and inv.kill is None and inv.kill_plan["call"] == call_no:
            kill = inv.kill_plan["phase"]
        entry = {"t": time.time(), "fn": inst.pool.name, "inst": inst.name,
                 "inv": inv.request_id if inv else None, "call": call_no, "op": op,
                 "key": key, "attempt": attempt, "fault": None, "sub": None, "kill": None,
                 "status": None, "err": None, "old_attempt": None,
                 "upd": (req.get("UpdateExpression") or "")[:40] or None}
        if kill == "before":
            # The process dies before this call reaches AWS; any fault drawn is moot.
            inv.kill = {"call": call_no, "phase": "before", "op": op}
            entry["kill"] = "before"
            inst.kill(f"planned kill before call {call_no} ({op})")
            cfg.record(entry)
            return reset_connection(self)
        if fault in ("throttle", "server_error"):
            entry.update(fault=fault, status=err[0], err=json.loads(err[2])["__type"].split("#")[-1])
            cfg.record(entry)
            return self._send(*err)
        if fault == "timeout":
            entry["fault"] = fault
            cfg.record(entry)
            time.sleep(cfg.stall_s)
            return reset_connection(self)
        if fault == "reset":
            entry["fault"] = fault
            cfg.record(entry)
            return reset_connection(self)
        try:
            status, headers, rbody, entry["tm"] = srv.forward(self.command, self.path, self.headers, body)
        except Exception as e:  # moto unreachable: answer as a gateway would
            entry.update(err=f"proxy: {e}", status=502)
            cfg.record(entry)
            return self._send(502, {"Content-Type": "text/plain"}, b"moto unreachable")
        entry["status"] = status
        entry["dt"] = round(time.time() - entry["t"], 4)
        if status >= 400:
            try:
                r = json.loads(rbody or b"{}")
                entry["err"] = (r.get("__type") or "").split("#")[-1]
                old = r.get("Item") or {}
                entry["old_attempt"] = old.get("attempt", {}).get("S")
            except ValueError:
                pass
        if kill == "after":
            inv.kill = {"call": call_no, "phase": "after", "op": op}
            entry["kill"] = "after"
            if fault:
                entry["fault_moot"] = fault
            inst.kill(f"planned kill after call {call_no} ({op})")
            cfg.record(entry)
            return reset_connection(self)
        if fault == "lost_answer":
            entry.update(fault=fault, sub=sub)
            cfg.record(entry)
            if sub == "reset":
                return reset_connection(self)
            if sub == "500":
                return self._send(*error_body(service, "server_error", srv.rng))
            time.sleep(cfg.stall_s)
            return reset_connection(self)
        cfg.record(entry)
        self._send(status, headers, rbody)

    def _send(self, status, headers, body):
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True


class FaultProxy(QuietServer):
    def __init__(self, instance, config: FaultConfig, moto_host: str, moto_port: int):
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.instance = instance
        self.config = config
        self.moto = (moto_host, moto_port)
        self.rng = random.Random(f"{config.seed}:proxy:{instance.name}")
        self.rng_lock = threading.Lock()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                         daemon=True, name=f"proxy-{instance.name}").start()

    def forward(self, method, path, headers, body):
        """One fresh connection per call and no retry: a retry here could apply a write twice
        and blame the code under test for the proxy's doing."""
        conn = http.client.HTTPConnection(*self.moto, timeout=60)
        try:
            fwd = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
            fwd["Content-Length"] = str(len(body))
            fwd["Connection"] = "close"
            with MOTO_LOCK:
                conn.request(method, path, body=body, headers=fwd)
                r = conn.getresponse()
                data = r.read()
                applied_at = time.time()
            out = {k: v for k, v in r.getheaders() if k.lower() not in HOP_BY_HOP}
            return r.status, out, data, applied_at
        finally:
            conn.close()
