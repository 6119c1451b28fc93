#!/usr/bin/env python3
"""Cost per webhook, measured per call: the five real function binaries under the chaos
harness's Lambda Runtime API emulator, against moto through a metering proxy (the fault proxy
with faults and kills off), fed by the harness's Twilio-like sender.

    python3 scripts/bench/cost.py                 # 40 events of each kind, about 3 minutes
    python3 scripts/bench/cost.py --quick         # 5 of each kind, for a smoke run
    python3 scripts/bench/cost.py --forward       # with FORWARD_URL (slow work, batches of 1)
    python3 scripts/bench/cost.py --record-first  # QUEUE_FIRST=false without FORWARD_URL

The functions are configured as template.yaml deploys them: QUEUE_FIRST=true without
FORWARD_URL, false with it.

For each kind (inbound SMS, inbound call, a message's status sequence, call status callbacks,
a fallback, an exact duplicate) it sends N events through the webhook, drains the work queue
through `event-worker` in batches of up to 10 (or 1 with --forward), and reports per event:

- DynamoDB write and read units, computed from the items themselves: the proxy reads the item
  from moto before and after each write, under the lock every call to moto takes, and applies
  DynamoDB's size rules (attribute names + values, 1 KB per WRU, 4 KB per RRU, half for an
  eventually consistent read, doubled in a transaction), including each GSI entry created,
  updated or deleted (an index key change is a delete plus a put; entry = projected
  attributes + keys + 100 bytes). A failed conditional write is charged for the item's size.
- SQS requests: each call by a function (64 KB chunks), plus the event source mapping's
  receives and deletes that carried messages (one per batch; empty polls are a fixed cost per
  queue, not per event).
- Lambda invocations and billed duration: each invocation's time between the runtime's
  `/next` and its answer, rounded up to 1 ms, against moto on this machine (debug binaries).

Results go to scripts/bench/cost/results.json (--out) with the cost table of BENCHMARKS.md
for both front doors (HTTP API $1.00 per million requests, Function URL $0).
"""
import argparse
import base64
import collections
import json
import math
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CHAOS = os.path.join(ROOT, "scripts", "chaos")
sys.path.insert(0, CHAOS)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

import fault_proxy  # noqa: E402
from fault_proxy import MOTO_LOCK, FaultConfig, FaultProxy, operation  # noqa: E402
from lambda_emulator import FunctionPool, http_response_of  # noqa: E402
from local_aws import create_resources  # noqa: E402
from receiver import Receiver  # noqa: E402
import twilio_sender as ts  # noqa: E402
from run import FUNCTIONS, TABLE, Moto, lambda_env  # noqa: E402

# us-east-1 list prices, as in BENCHMARKS.md.
PRICES = {
    "lambda_gb_s": 0.0000133334,  # arm64
    "lambda_request": 0.20 / 1e6,
    "http_api_request": 1.00 / 1e6,
    "function_url_request": 0.0,
    "wru": 0.625 / 1e6,
    "rru": 0.125 / 1e6,
    "sqs_request": 0.40 / 1e6,
}
MEMORY_MB = {"webhook": 128, "event-worker": 256}  # template.yaml
COLD_SHARE = 0.01
PEER_TABLE = "peer-idempotency"
# Assumed in-region latency of one call, for the "region" duration (moto on a busy 2-core VM
# takes 5 to 40 ms per call; DynamoDB and SQS answer in a few ms in a region).
REGION_LATENCY_MS = {"DynamoDB": 5.0, "SQS": 8.0}  # share of invocations that start cold (as in BENCHMARKS.md)


# --- DynamoDB's item size rules ----------------------------------------------------------------
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html

def number_size(text: str) -> int:
    digits = text.lstrip("-").replace(".", "").lstrip("0").split("e")[0].split("E")[0]
    digits = digits.rstrip("0") or "0"
    return math.ceil(len(digits) / 2) + 1


def value_size(v: dict) -> int:
    (t, x), = v.items()
    if t == "S":
        return len(x.encode())
    if t == "N":
        return number_size(x)
    if t == "B":
        return len(base64.b64decode(x))
    if t in ("BOOL", "NULL"):
        return 1
    if t == "SS":
        return sum(len(s.encode()) for s in x)
    if t == "NS":
        return sum(number_size(s) for s in x)
    if t == "BS":
        return sum(len(base64.b64decode(s)) for s in x)
    if t == "L":
        return 3 + sum(value_size(e) + 1 for e in x)
    if t == "M":
        return 3 + sum(len(k.encode()) + value_size(e) + 1 for k, e in x.items())
    raise ValueError(t)


def item_size(item) -> int:
    return sum(len(k.encode()) + value_size(v) for k, v in (item or {}).items())


def write_units(size: int) -> int:
    return max(1, math.ceil(size / 1024))


def read_units(size: int, consistent: bool) -> float:
    units = max(1, math.ceil(size / 4096))
    return units if consistent else units / 2


class Schema:
    """The table's key and its GSIs, read from moto (so the numbers follow the table's
    definition in local_aws.py / template.yaml)."""

    def __init__(self, ddb, table):
        t = ddb.describe_table(TableName=table)["Table"]
        self.keys = [k["AttributeName"] for k in t["KeySchema"]]
        self.indexes = []
        for g in t.get("GlobalSecondaryIndexes", []):
            keys = [k["AttributeName"] for k in g["KeySchema"]]
            p = g["Projection"]
            self.indexes.append({"name": g["IndexName"], "keys": keys, "type": p["ProjectionType"],
                                 "attrs": p.get("NonKeyAttributes", [])})

    def entry(self, index, item):
        """The index entry of `item` (None if the item is not in the sparse index)."""
        if not item or any(k not in item for k in index["keys"]):
            return None
        if index["type"] == "ALL":
            return dict(item)
        names = set(self.keys) | set(index["keys"]) | set(index["attrs"])
        return {k: v for k, v in item.items() if k in names}

    def gsi_write_units(self, before, after):
        """WRU of the index entries a write changed, per index."""
        out = {}
        for index in self.indexes:
            old, new = self.entry(index, before), self.entry(index, after)
            units = 0
            size = lambda e: item_size(e) + 100  # noqa: E731
            if old is None and new is not None:
                units = write_units(size(new))
            elif old is not None and new is None:
                units = write_units(size(old))
            elif old is not None and new is not None:
                if any(old.get(k) != new.get(k) for k in index["keys"]):
                    units = write_units(size(old)) + write_units(size(new))
                elif old != new:
                    units = write_units(max(size(old), size(new)))
            out[index["name"]] = units
        return out


# --- the metering proxy ------------------------------------------------------------------------

class Meter:
    """Every AWS call of the functions, costed, tagged with the phase running when it was made."""

    def __init__(self, moto_url):
        self.ddb = boto3.client("dynamodb", endpoint_url=moto_url, region_name="us-east-1",
                                aws_access_key_id="test", aws_secret_access_key="test",
                                config=Config(retries={"max_attempts": 3}))
        self.schemas = {}
        self.phase = None
        self.lock = threading.Lock()
        self.calls = []
        self.sizes = collections.defaultdict(list)  # (phase, item class) -> sizes written
        self.layout = {}
        self.samples = {}

    def get(self, table, key):
        return self.ddb.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")

    def schema(self, table):
        if table not in self.schemas:
            self.schemas[table] = Schema(self.ddb, table)
        return self.schemas[table]

    def key_of(self, table, item):
        return {k: item[k] for k in self.schema(table).keys}

    def record(self, entry):
        entry["phase"] = self.phase
        with self.lock:
            self.calls.append(entry)

    def cost_write(self, table, op, req, before, after, ok, transact=False):
        factor = 2 if transact else 1
        if op == "PutItem":
            proposed = item_size(req["Item"])
        else:
            proposed = 0
        size = max(item_size(before), item_size(after), proposed if not ok else 0)
        wru = write_units(size) * factor
        gsi = self.schema(table).gsi_write_units(before, after) if ok else {}
        gsi_wru = sum(gsi.values()) * factor
        if ok and after:
            cls = item_class(after)
            self.sizes[(self.phase, cls)].append(item_size(after))
            # Where the bytes of the last item written of each class go, per attribute.
            self.layout[(self.phase, cls)] = {k: len(k.encode()) + value_size(v) for k, v in after.items()}
            if "event" in after:
                self.samples[self.phase] = after["event"]["S"]
        return wru, gsi_wru

    def forward(self, proxy, method, path, headers, body):
        op = operation(headers)
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            req = {}
        service, name = op.split(".", 1) if "." in op else (op, op)
        conn = fault_proxy.http.client.HTTPConnection(*proxy.moto, timeout=60)
        fwd = {k: v for k, v in headers.items() if k.lower() not in fault_proxy.HOP_BY_HOP}
        fwd["Content-Length"] = str(len(body))
        fwd["Connection"] = "close"
        entry = {"fn": proxy.instance.pool.name, "op": op, "wru": 0, "gsi_wru": 0, "rru": 0.0, "sqs": 0}
        try:
            with MOTO_LOCK:
                writes = []
                if service == "DynamoDB" and name in ("PutItem", "UpdateItem", "DeleteItem"):
                    key = self.key_of(req["TableName"], req["Item"]) if name == "PutItem" else req["Key"]
                    writes.append((name, req, req["TableName"], key, self.get(req["TableName"], key)))
                elif service == "DynamoDB" and name == "TransactWriteItems":
                    for t in req["TransactItems"]:
                        (kind, w), = t.items()
                        key = self.key_of(w["TableName"], w["Item"]) if kind == "Put" else w["Key"]
                        writes.append((kind + "Item" if kind != "ConditionCheck" else kind, w, w["TableName"],
                                       key, self.get(w["TableName"], key)))
                conn.request(method, path, body=body, headers=fwd)
                r = conn.getresponse()
                data = r.read()
                status = r.status
                for name_, w, table, key, before in writes:
                    after = self.get(table, key)
                    ok = status == 200
                    if name_ == "ConditionCheck":
                        entry["rru"] += read_units(item_size(before), True) * 2
                        continue
                    wru, gsi = self.cost_write(table, name_, w, before, after, ok,
                                               transact=name == "TransactWriteItems")
                    entry["wru"] += wru
                    entry["gsi_wru"] += gsi
                    entry.setdefault("sizes", []).append(item_size(after))
            out = {k: v for k, v in r.getheaders() if k.lower() not in fault_proxy.HOP_BY_HOP}
        finally:
            conn.close()
        try:
            resp = json.loads(data or b"{}")
        except ValueError:
            resp = {}
        entry["status"] = status
        if service == "DynamoDB" and name == "GetItem":
            entry["rru"] = read_units(item_size(resp.get("Item")), bool(req.get("ConsistentRead")))
        elif service == "DynamoDB" and name in ("Query", "Scan"):
            size = sum(item_size(i) + (100 if req.get("IndexName") else 0) for i in resp.get("Items", []))
            entry["rru"] = read_units(size, bool(req.get("ConsistentRead")) and not req.get("IndexName"))
        elif service == "DynamoDB" and name == "BatchGetItem":
            for table, items in (resp.get("Responses") or {}).items():
                consistent = bool(req["RequestItems"][table].get("ConsistentRead"))
                entry["rru"] += sum(read_units(item_size(i), consistent) for i in items)
        elif service == "SQS":
            if name == "SendMessage":
                entry["sqs"] = max(1, math.ceil(len(req.get("MessageBody", "").encode()) / 65536))
                entry["msg_bytes"] = len(req.get("MessageBody", "").encode())
            elif name == "SendMessageBatch":
                total = sum(len(e.get("MessageBody", "").encode()) for e in req.get("Entries", []))
                entry["sqs"] = max(1, math.ceil(total / 65536))
            else:
                entry["sqs"] = 1
        self.record(entry)
        return status, out, data, time.time()


def item_class(item) -> str:
    pk = item.get("pk", {}).get("S", "")
    if pk.startswith("state#"):
        return "state"
    if pk.startswith("consent#"):
        return "consent"
    return "event"


class MeterHandler(fault_proxy.ProxyHandler):
    def setup(self):
        super().setup()
        # The answer's headers and body go out in two writes: without TCP_NODELAY the body
        # waits for the client's delayed ACK (40 ms), which no region adds.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self):
        # The whole time the function waited on this call (the proxy's own HTTP handling,
        # moto, the metering): replaced by an in-region latency in the "region" duration.
        inv = self.server.instance.current
        t0 = time.time()
        service = fault_proxy.operation(self.headers).split(".", 1)[0]
        try:
            super().do_POST()
        finally:
            if inv is not None:
                with self.server.meter.lock:
                    inv.waits = getattr(inv, "waits", []) + [(t0, time.time(), service)]


class MeterProxy(FaultProxy):
    meter: Meter = None

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.RequestHandlerClass = MeterHandler

    def forward(self, method, path, headers, body):
        return self.meter.forward(self, method, path, headers, body)


# --- the driver --------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = os.path.join(ROOT, "target", "cost", stamp)
        self.log_dir = os.path.join(self.run_dir, "logs")
        os.makedirs(self.log_dir, exist_ok=True)
        self.moto = Moto(self.run_dir)
        ddb, sqs = self.moto.client("dynamodb"), self.moto.client("sqs")
        self.queue_url = create_resources(ddb, sqs, TABLE)
        self.sqs = sqs
        self.ddb = ddb
        self.meter = Meter(self.moto.url)
        MeterProxy.meter = self.meter
        self.faults = FaultConfig(0.0, "cost")
        self.receiver = Receiver("cost", 0.0, 0.0) if args.forward else None
        self.esm = []  # (phase, op, messages, requests)
        self.invocations = []  # (phase, function, billed ms, cold)
        self.phase = None
        env = lambda_env(args.bin_dir, self.queue_url, ts.TEST_TOKEN, 11,
                         queue_first=not args.forward, log_level="warn")
        if args.record_first:
            env["QUEUE_FIRST"] = "false"
        self.env = env
        self.pools = {}
        for name in FUNCTIONS:
            worker = name == "event-worker"
            fenv = dict(env, AWS_LAMBDA_FUNCTION_NAME=name,
                        AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(MEMORY_MB["event-worker" if worker else "webhook"]),
                        AWS_LAMBDA_LOG_GROUP_NAME=f"/aws/lambda/{name}")
            self.pools[name] = FunctionPool(
                name, os.path.join(args.bin_dir, name), fenv, timeout_s=30.0 if worker else 10.0,
                max_instances=args.concurrency, log_dir=self.log_dir, rng=random.Random(name),
                proxy_factory=lambda inst: MeterProxy(inst, self.faults, "127.0.0.1", self.moto.port),
                env_for_instance=(lambda inst: {"FORWARD_URL": self.receiver.url(inst.name)})
                if (worker and self.receiver) else None)
        if args.peer_python:
            self.add_python_peer()

    def add_python_peer(self):
        """The Python + Powertools receiver of the cold-start benchmark
        (scripts/bench/coldstart/python_handler): its own idempotency table and queue, run by
        the real runtime interface client under the same emulator and metering proxy."""
        python = self.args.peer_python
        self.ddb.create_table(TableName=PEER_TABLE, BillingMode="PAY_PER_REQUEST",
                              AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                              KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
        peer_queue = self.sqs.create_queue(QueueName="peer-work")["QueueUrl"]
        wrapper = os.path.join(self.run_dir, "python-peer")
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\nexec {python} -m awslambdaric handler.lambda_handler\n")
        os.chmod(wrapper, 0o755)
        env = dict(self.env, AWS_LAMBDA_FUNCTION_NAME="python-peer", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="128",
                   AWS_LAMBDA_LOG_GROUP_NAME="/aws/lambda/python-peer", IDEMPOTENCY_TABLE=PEER_TABLE,
                   WORK_QUEUE_URL=peer_queue, AWS_EXECUTION_ENV="AWS_Lambda_python3.11",
                   PYTHONPATH=os.path.join(HERE, "coldstart", "python_handler"), PYTHONDONTWRITEBYTECODE="1")
        self.pools["python-peer"] = FunctionPool(
            "python-peer", wrapper, env, timeout_s=10.0, max_instances=self.args.concurrency,
            log_dir=self.log_dir, rng=random.Random("python-peer"), init_timeout_s=30.0,
            proxy_factory=lambda inst: MeterProxy(inst, self.faults, "127.0.0.1", self.moto.port))

    def invoke(self, function, payload):
        inv = self.pools[function].invoke(payload, allow_kill=False)
        if inv.outcome != "ok":
            raise RuntimeError(f"{function} invocation {inv.outcome}: {(inv.body or b'')[:300]!r}; see {self.log_dir}")
        total = inv.t_end - inv.t_start
        # In a region: the time outside AWS calls as measured, plus a typical in-region
        # latency per call instead of the wait on the proxy, moto and the metering's reads
        # (REGION_LATENCY_MS); calls that overlap (the queue-first claim and send) wait once.
        waiting, latency = 0.0, 0.0
        group_end, group_lat = None, 0.0
        for t0, t1, service in sorted(getattr(inv, "waits", [])):
            if group_end is None or t0 > group_end:
                latency += group_lat
                group_lat, group_end = 0.0, t1
                waiting += t1 - t0
            elif t1 > group_end:
                waiting += t1 - group_end
                group_end = t1
            group_lat = max(group_lat, REGION_LATENCY_MS[service] / 1000)
        latency += group_lat
        region = max(0.0, total - waiting) + latency
        self.invocations.append((self.phase, function, math.ceil(total * 1000), math.ceil(region * 1000)))
        return inv

    def send(self, function, payload):
        inv = self.invoke(function, payload)
        status, body = http_response_of(inv)
        if status != 200:
            raise RuntimeError(f"{function} answered {status}: {body[:300]}; see {self.log_dir}")

    def drain(self):
        """The event source mapping: receive batches of up to 10 (1 with slow work), invoke
        the worker, delete what it did not report as failed."""
        batch = 1 if self.args.forward else 10
        idle = 0
        while idle < 3:
            with MOTO_LOCK:
                r = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=batch,
                                             WaitTimeSeconds=0, AttributeNames=["All"])
            msgs = r.get("Messages", [])
            if not msgs:
                idle += 1
                time.sleep(0.3)
                continue
            idle = 0
            size = sum(len(m["Body"].encode()) for m in msgs)
            self.esm.append((self.phase, "ReceiveMessage", len(msgs), max(1, math.ceil(size / 65536))))
            records = [{
                "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                "attributes": {"ApproximateReceiveCount": m.get("Attributes", {}).get("ApproximateReceiveCount", "1"),
                               "SentTimestamp": str(int(time.time() * 1000)), "SenderId": "AROAEXAMPLE",
                               "ApproximateFirstReceiveTimestamp": str(int(time.time() * 1000))},
                "messageAttributes": {}, "md5OfBody": m.get("MD5OfBody", ""), "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:twilio-work", "awsRegion": "us-east-1",
            } for m in msgs]
            inv = self.invoke("event-worker", json.dumps({"Records": records}).encode())
            failed = {f["itemIdentifier"] for f in (json.loads(inv.body).get("batchItemFailures") or [])}
            if failed:
                raise RuntimeError(f"worker failed {len(failed)} records; see {self.log_dir}")
            with MOTO_LOCK:
                self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                    {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]} for j, m in enumerate(msgs)])
            self.esm.append((self.phase, "DeleteMessageBatch", len(msgs), 1))

    def phase_run(self, name, requests, per):
        """Send `requests` [(function, payload)], then drain; `per`: events per unit reported."""
        self.phase = self.meter.phase = name
        print(f"[cost] {name}: {len(requests)} webhooks", flush=True)
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(self.args.concurrency) as pool:
            list(pool.map(lambda fp: self.send(*fp), requests))
        self.drain()
        self.phase = self.meter.phase = None

    def run(self):
        n = self.args.events
        rng = random.Random("cost")
        sender = ts.Sender([], None, "cost", 1.0, 1)
        idx = [0]

        def prep(ev):
            ev.idx = idx[0]
            idx[0] += 1
            ev.token = f"{idx[0]:08d}-0000-4000-8000-000000000000"
            return ev

        # warm every function once (cold starts are costed separately)
        self.phase = self.meter.phase = "warmup"
        warm_sms = [prep(ts._sms(rng, 0)[0]) for _ in range(self.args.concurrency)]
        from concurrent.futures import ThreadPoolExecutor
        for fn, variant in (("sms-webhook", "primary"), ("fallback-webhook", "fallback")):
            with ThreadPoolExecutor(self.args.concurrency) as pool:
                list(pool.map(lambda ev: self.send(fn, sender.request(ev, variant)), warm_sms))
        calls = [prep(ts._call(rng, 0)[0]) for _ in range(self.args.concurrency)]
        with ThreadPoolExecutor(self.args.concurrency) as pool:
            list(pool.map(lambda ev: self.send("voice-webhook", sender.request(ev, "primary")), calls))
        stat = [prep(ts._message_statuses(rng, 0)[0]) for _ in range(self.args.concurrency)]
        with ThreadPoolExecutor(self.args.concurrency) as pool:
            list(pool.map(lambda ev: self.send("status-callback", sender.request(ev, "primary")), stat))
        self.drain()

        sms = [prep(ts._sms(rng, 0)[0]) for _ in range(n)]
        self.phase_run("inbound SMS", [("sms-webhook", sender.request(e, "primary")) for e in sms], 1)
        self.phase_run("duplicate SMS (exact copy, after processing)",
                       [("sms-webhook", sender.request(e, "primary")) for e in sms], 1)
        voice = [prep(ts._call(rng, 0)[0]) for _ in range(n)]
        self.phase_run("inbound call", [("voice-webhook", sender.request(e, "primary")) for e in voice], 1)
        # A message's status sequence: queued, sent, delivered/undelivered, in order.
        seqs = [[prep(e) for e in ts._message_statuses(rng, 0)] for _ in range(max(1, n // 3))]
        for step in range(3):
            self.phase_run(f"message status callback ({['queued', 'sent', 'final'][step]})",
                           [("status-callback", sender.request(s[step], "primary")) for s in seqs], 1)
        # Call status callbacks of the calls above (ringing, in-progress, completed).
        cstat = []
        for e in voice[:max(1, n // 3)]:
            for seq, status in enumerate(["ringing", "in-progress", "completed"]):
                params = [("AccountSid", ts.ACCOUNT), ("ApiVersion", "2010-04-01"),
                          ("CallSid", dict(e.params)["CallSid"]), ("CallStatus", status),
                          ("CallbackSource", "call-progress-events"), ("Direction", "inbound"),
                          ("From", dict(e.params)["From"]), ("To", "+14155550199"),
                          ("Timestamp", "Fri, 27 Nov 2026 14:00:00 +0000"), ("SequenceNumber", str(seq))]
                cstat.append(prep(ts.Event("call_status", "status", params, "", "", None, 0)))
        self.phase_run("call status callback", [("status-callback", sender.request(e, "primary")) for e in cstat], 1)
        fb = [prep(ts._sms(rng, 0)[0]) for _ in range(n)]
        self.phase_run("fallback (SMS whose primary failed)",
                       [("fallback-webhook", sender.request(e, "fallback")) for e in fb], 1)
        if self.args.peer_python:
            self.phase = self.meter.phase = "warmup"
            warm = [prep(ts._sms(rng, 0)[0]) for _ in range(self.args.concurrency)]
            with ThreadPoolExecutor(self.args.concurrency) as pool:
                list(pool.map(lambda ev: self.send("python-peer", sender.request(ev, "primary")), warm))
            peer = [prep(ts._sms(rng, 0)[0]) for _ in range(n)]
            # No worker: the peer only receives (its queue is nobody's here).
            self.phase_run("Python + Powertools: inbound SMS",
                           [("python-peer", sender.request(e, "primary")) for e in peer], 1)
            self.phase_run("Python + Powertools: duplicate SMS",
                           [("python-peer", sender.request(e, "primary")) for e in peer], 1)
        self.moto_time = None

    def results(self):
        phases = [p for p in dict.fromkeys(c["phase"] for c in self.meter.calls) if p and p != "warmup"]
        out = {}
        for p in phases:
            calls = [c for c in self.meter.calls if c["phase"] == p]
            hooks = [i for i in self.invocations if i[0] == p and i[1] != "event-worker"]
            workers = [i for i in self.invocations if i[0] == p and i[1] == "event-worker"]
            n = len(hooks)
            esm = [e for e in self.esm if e[0] == p]
            ops = collections.Counter(f"{c['fn'] if c['fn'] == 'event-worker' else 'webhook'}:{c['op']}" for c in calls)
            r = {
                "events": n,
                "dynamodb_wru_table": sum(c["wru"] for c in calls) / n,
                "dynamodb_wru_gsi": sum(c["gsi_wru"] for c in calls) / n,
                "dynamodb_rru": sum(c["rru"] for c in calls) / n,
                "sqs_requests_functions": sum(c["sqs"] for c in calls) / n,
                "sqs_requests_esm": sum(e[3] for e in esm) / n,
                "sqs_message_bytes": (sum(c.get("msg_bytes", 0) for c in calls if c["fn"] != "event-worker")
                                      / max(1, sum(1 for c in calls if c.get("msg_bytes") and c["fn"] != "event-worker"))),
                "webhook_invocations": 1.0,
                "webhook_billed_ms_measured": sum(i[2] for i in hooks) / n,
                "webhook_billed_ms": sum(i[3] for i in hooks) / n,
                "worker_invocations": len(workers) / n,
                "worker_billed_ms_measured": sum(i[2] for i in workers) / n,
                "worker_billed_ms": sum(i[3] for i in workers) / n,
                "messages_per_batch": (sum(e[2] for e in esm if e[1] == "ReceiveMessage")
                                       / max(1, sum(1 for e in esm if e[1] == "ReceiveMessage"))),
                "calls_per_event": {k: v / n for k, v in sorted(ops.items())},
                "item_bytes": {cls: round(sum(v) / len(v)) for (ph, cls), v in self.meter.sizes.items()
                               if ph == p and v},
                "item_layout": {cls: v for (ph, cls), v in self.meter.layout.items() if ph == p},
            }
            r["dynamodb_wru"] = r["dynamodb_wru_table"] + r["dynamodb_wru_gsi"]
            r["sqs_requests"] = r["sqs_requests_functions"] + r["sqs_requests_esm"]
            r["cost_per_million"] = cost(r)
            out[p] = r
        return out


def cost(r):
    """$ per million events of one kind, per line of the table, for both front doors."""
    P = PRICES
    gb = lambda mb: mb / 1024  # noqa: E731
    lines = {
        "webhook Lambda: duration": r["webhook_billed_ms"] / 1000 * gb(MEMORY_MB["webhook"]) * P["lambda_gb_s"],
        "webhook Lambda: requests": r["webhook_invocations"] * P["lambda_request"],
        "worker Lambda (duration + requests)": (r["worker_billed_ms"] / 1000 * gb(MEMORY_MB["event-worker"])
                                                * P["lambda_gb_s"] + r["worker_invocations"] * P["lambda_request"]),
        "DynamoDB writes": r["dynamodb_wru"] * P["wru"],
        "DynamoDB reads": r["dynamodb_rru"] * P["rru"],
        "SQS": r["sqs_requests"] * P["sqs_request"],
    }
    lines = {k: v * 1e6 for k, v in lines.items()}
    base = sum(lines.values())
    return {"lines": lines, "http_api": base + P["http_api_request"] * 1e6,
            "function_url": base + P["function_url_request"] * 1e6}


def markdown(res):
    kinds = list(res)
    head = "| per million events | " + " | ".join(kinds) + " |"
    rows = [head, "|---|" + "---:|" * len(kinds)]

    def row(label, f, fmt="{:.2f}"):
        rows.append(f"| {label} | " + " | ".join(fmt.format(f(res[k])) for k in kinds) + " |")

    row("DynamoDB WRU per event (table + GSI)", lambda r: r["dynamodb_wru"], "{:.2f}")
    row("… of which GSI", lambda r: r["dynamodb_wru_gsi"], "{:.2f}")
    row("DynamoDB RRU per event", lambda r: r["dynamodb_rru"], "{:.2f}")
    row("SQS requests per event", lambda r: r["sqs_requests"], "{:.2f}")
    row("webhook billed ms (measured against moto, with the metering)", lambda r: r["webhook_billed_ms_measured"], "{:.1f}")
    row("webhook billed ms (in a region)", lambda r: r["webhook_billed_ms"], "{:.1f}")
    row("worker billed ms per event (measured against moto, with the metering)", lambda r: r["worker_billed_ms_measured"], "{:.1f}")
    row("worker billed ms per event (in a region)", lambda r: r["worker_billed_ms"], "{:.1f}")
    for line in next(iter(res.values()))["cost_per_million"]["lines"]:
        row(line, lambda r, line=line: r["cost_per_million"]["lines"][line], "${:.3f}")
    row("**total, HTTP API**", lambda r: r["cost_per_million"]["http_api"], "**${:.2f}**")
    row("**total, Function URL**", lambda r: r["cost_per_million"]["function_url"], "**${:.2f}**")
    return "\n".join(rows)


def git_rev():
    try:
        env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, env=env).stdout.strip()
    except OSError:
        return "?"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=40, help="events of each kind (default 40)")
    p.add_argument("--quick", action="store_true", help="5 events of each kind")
    p.add_argument("--forward", action="store_true", help="set FORWARD_URL (slow work; batches of 1)")
    p.add_argument("--record-first", action="store_true",
                   help="QUEUE_FIRST=false without FORWARD_URL too (the template sets it only with FORWARD_URL)")
    p.add_argument("--peer-python", metavar="PYTHON",
                   help="also measure the Python + Powertools peer (scripts/bench/coldstart/python_handler) "
                        "with this interpreter (it needs twilio, boto3, aws-lambda-powertools, awslambdaric)")
    p.add_argument("--concurrency", type=int, default=4, help="concurrent webhook invocations")
    p.add_argument("--bin-dir", help="the five binaries (default: $CARGO_TARGET_DIR/debug, else target/debug)")
    p.add_argument("--out", default=os.path.join(HERE, "cost", "results.json"))
    p.add_argument("--label", help="what this run measures (kept in the results)")
    a = p.parse_args()
    if a.quick:
        a.events = 5
    a.bin_dir = os.path.abspath(a.bin_dir or os.path.join(os.environ.get("CARGO_TARGET_DIR")
                                                          or os.path.join(ROOT, "target"), "debug"))
    for f in FUNCTIONS:
        if not os.path.exists(os.path.join(a.bin_dir, f)):
            raise SystemExit(f"missing {a.bin_dir}/{f}: cargo build -p {' -p '.join(FUNCTIONS)}")
    t0 = time.time()
    b = Bench(a)
    try:
        b.run()
        res = b.results()
    finally:
        for pool in b.pools.values():
            pool.close()
        b.moto.stop()
        if b.receiver:
            b.receiver.shutdown()
    with open(os.path.join(b.run_dir, "sample-events.json"), "w") as f:
        json.dump(b.meter.samples, f, indent=1)
    doc = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)), "git": git_rev(),
        "label": a.label, "events_per_kind": a.events, "forward_url": a.forward,
        "queue_first": not (a.forward or a.record_first),
        "binaries": a.bin_dir, "seconds": round(time.time() - t0),
        "prices": PRICES, "memory_mb": MEMORY_MB,
        "notes": ["Lambda durations (`*_billed_ms_measured`) are measured against moto on a shared 2-core VM "
                  "with debug binaries, including the metering's own reads; the cost lines use `*_billed_ms`: the "
                  "time outside AWS calls as measured, plus an assumed in-region latency per call (overlapping "
                  "calls once) "
                  f"({REGION_LATENCY_MS} ms). Cold starts are not included (BENCHMARKS.md: 1% of invocations, "
                  "a few ms of init).",
                  "SQS: the event source mapping's receives and deletes that carried messages are counted; "
                  "its empty polls are a fixed cost per queue, not per event."],
        "region_latency_ms": REGION_LATENCY_MS,
        "kinds": res,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")
    print(markdown(res))
    print(f"[cost] results in {a.out} ({doc['seconds']} s); logs in {b.run_dir}")


if __name__ == "__main__":
    main()
