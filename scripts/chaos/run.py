#!/usr/bin/env python3
"""Fault injection at the Lambda level: the five real function binaries under a Lambda Runtime
API emulator, against moto through a fault proxy, fed by a Twilio-like sender, with random
kills; then every event is checked: 0 lost, 0 doubled, 0 half-done.

    python3 scripts/chaos/run.py --mode long  --seed 1     # >= 2,000 events, writes RESULTS.md
    python3 scripts/chaos/run.py --mode short --seed 1     # the test-suite run
    python3 scripts/chaos/run.py --events 2000 --fault-rate 0.10 --kill-rate 0.02 --seed 1

Everything a run did is kept under target/chaos/<time>-seed<N>/ (or --run-dir): one log per
function process, the proxy's trace of every AWS call, the sender's attempts, the receiver's
log, the final table, and report.md with the evidence for every failing event.
See scripts/chaos/README.md.
"""
import argparse
import collections
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

import check  # noqa: E402
from fault_proxy import MOTO_LOCK, FaultConfig, FaultProxy  # noqa: E402
from lambda_emulator import FunctionPool  # noqa: E402
from local_aws import create_resources  # noqa: E402
from receiver import Receiver  # noqa: E402
from twilio_sender import KINDS, TEST_TOKEN, Sender, generate  # noqa: E402

FUNCTIONS = ["sms-webhook", "voice-webhook", "status-callback", "fallback-webhook", "event-worker"]
TABLE = "twilio-events"
# Settings the worker may read (names proposed to the code's owners; the harness checks the
# event-worker binary for each name and falls back to the hard-coded values otherwise).
GRACE_ENV, LEASE_ENV = "SWEEP_GRACE_SECONDS", "WORKER_LEASE_SECONDS"
HARD_CODED = {"grace_s": 120, "lease_s": 60}  # WorkerSettings::default() in worker.rs

MODES = {
    # events, sends per second, concurrent senders
    "long": dict(events=2000, rate=10.0, concurrency=8),
    "short": dict(events=200, rate=10.0, concurrency=8),
}


def log(msg):
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=sorted(MODES), default="long",
                   help="presets for --events/--rate/--concurrency (long writes RESULTS.md)")
    p.add_argument("--events", type=int, help="events to send (long: 2000, short: 200)")
    p.add_argument("--fault-rate", type=float, default=0.10,
                   help="share of eligible AWS calls faulted (PutItem/SendMessage of the webhooks, every worker call)")
    p.add_argument("--kill-rate", type=float, default=0.02, help="share of invocations whose process is SIGKILLed")
    p.add_argument("--seed", default="1")
    p.add_argument("--rate", type=float, help="events sent per second")
    p.add_argument("--concurrency", type=int, help="concurrent sender threads (= max environments per webhook)")
    p.add_argument("--pollers", type=int, default=6, help="concurrent SQS pollers driving event-worker")
    p.add_argument("--bin-dir", help="directory with the five binaries (default: build them into target/debug)")
    p.add_argument("--bin-label", help="what the --bin-dir binaries are, for the report (e.g. a commit)")
    p.add_argument("--no-build", action="store_true", help="use target/debug without running cargo build")
    p.add_argument("--run-dir", help="where logs and reports go (default target/chaos/<time>-seed<N>)")
    p.add_argument("--results", help="also write the result table here (long mode: scripts/chaos/RESULTS.md)")
    p.add_argument("--auth-token", default=TEST_TOKEN,
                   help="TWILIO_AUTH_TOKEN of the webhooks, and the sender's signing key (default: the test token)")
    p.add_argument("--batch-size", type=int,
                   help="SQS batch size of the worker (default: the template's BatchSize with FORWARD_URL set)")
    p.add_argument("--lock-seconds", type=int, default=11,
                   help="LOCK_SECONDS of the webhooks (template: must exceed the 10 s webhook timeout)")
    p.add_argument("--sweep-grace", type=int, default=10,
                   help=f"{GRACE_ENV} for the worker, if its binary reads it (else the hard-coded 120 s applies)")
    p.add_argument("--lease", type=int, default=40,
                   help=f"{LEASE_ENV} for the worker, if its binary reads it (else the hard-coded 60 s applies)")
    p.add_argument("--visibility", type=int,
                   help="work queue VisibilityTimeout (s); default: the worker timeout, and more than a "
                        "quarter of the lease so a job blocked by a dead worker's lease is not dead-lettered first")
    p.add_argument("--worker-timeout", type=float,
                   help="event-worker function timeout (s); default 30 s, the template's: the worker starts a "
                        "record only if its worst case (18 s with FORWARD_URL) fits before the deadline")
    p.add_argument("--webhook-timeout", type=float, default=10.0, help="webhook function timeout (template: 10 s)")
    p.add_argument("--sweep-interval", type=float, default=5.0, help="seconds between scheduled sweeps")
    p.add_argument("--dup-rate", type=float, default=0.08, help="share of accepted events Twilio sends again")
    p.add_argument("--receiver-fail", type=float, default=0.05, help="share of forwards the receiver answers 500")
    p.add_argument("--receiver-stall", type=float, default=0.02,
                   help="share of forwards the receiver answers only after 6 s (the forwarder gives up at 5 s)")
    p.add_argument("--queue-first", action="store_true",
                   help="QUEUE_FIRST=true and no FORWARD_URL (the template's deployment without slow work): "
                        "an event is complete when folded once; records are only the reply cache")
    p.add_argument("--reanalyse", metavar="RUN_DIR",
                   help="only re-check a finished run from its files (must be the first argument)")
    p.add_argument("--quiesce-timeout", type=float,
                   help="max seconds to wait for quiescence after the last send (default from the timings)")
    a = p.parse_args(argv)
    for k, v in MODES[a.mode].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.results is None and a.mode == "long":
        a.results = os.path.join(HERE, "RESULTS.md")
    return a


def build(args):
    if args.bin_dir:
        return os.path.abspath(args.bin_dir)
    bin_dir = os.path.join(ROOT, "target", "debug")
    if not args.bin_label:
        args.bin_label = (f"`target/debug`, built from git {git_rev()}" if not args.no_build
                          else "`target/debug` as found (--no-build)")
    if not args.no_build:
        log("cargo build (debug) of the five functions")
        cmd = ["cargo", "build", "--quiet", "--locked"]
        for f in FUNCTIONS:
            cmd += ["-p", f]
        subprocess.run(cmd, cwd=ROOT, check=True)
    return bin_dir


def template_batch_size() -> int:
    """The worker's SQS BatchSize in template.yaml, as deployed with FORWARD_URL set."""
    with open(os.path.join(ROOT, "template.yaml")) as f:
        text = f.read()
    m = re.search(r"BatchSize:\s*!If\s*\[\s*HasForwardUrl\s*,\s*(\d+)", text) or re.search(r"BatchSize:\s*(\d+)", text)
    return int(m.group(1)) if m else 10


def binary_reads(path, name) -> bool:
    with open(path, "rb") as f:
        return name.encode() in f.read()


def lambda_env(bin_dir, queue_url, auth_token, lock_seconds, queue_first, log_level):
    """The environment every function process gets, as Lambda and template.yaml would set it
    (moto's endpoint and each function's name are added by the caller)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_EXECUTION_ENV": "AWS_Lambda_provided.al2023",
        "_HANDLER": "bootstrap", "LAMBDA_TASK_ROOT": bin_dir,
        "EVENT_TABLE": TABLE, "WORK_QUEUE_URL": queue_url,
        "TWILIO_AUTH_TOKEN": auth_token, "LOCK_SECONDS": str(lock_seconds),
        "EVENT_TTL_SECONDS": "86400", "TLS_TRUST_STORE": "system",
        "LOG_FORMAT": "json", "RUST_LOG": log_level, "RUST_BACKTRACE": "0",
        "QUEUE_FIRST": "true" if queue_first else "false",
    }


class Moto:
    def __init__(self, run_dir):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(run_dir, "moto.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1).read()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("moto server did not start")

    def client(self, service):
        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test",
                            config=Config(retries={"max_attempts": 10, "mode": "standard"},
                                          max_pool_connections=20))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Harness:
    def __init__(self, args):
        self.args = args
        self.t_start = time.time()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = os.path.abspath(args.run_dir or os.path.join(ROOT, "target", "chaos", f"{stamp}-seed{args.seed}"))
        self.log_dir = os.path.join(self.run_dir, "logs")
        os.makedirs(self.log_dir, exist_ok=True)
        self.notes = []
        self.stop = threading.Event()
        self.worker_inflight = 0
        self.lock = threading.Lock()
        self.batches = collections.Counter()
        self.invocations = []

    def note(self, msg):
        with self.lock:
            self.notes.append(msg)
        log(msg)

    # --- set-up ------------------------------------------------------------------------------
    def setup(self, bin_dir):
        a = self.args
        worker_bin = os.path.join(bin_dir, "event-worker")
        for f in FUNCTIONS:
            if not os.path.exists(os.path.join(bin_dir, f)):
                raise SystemExit(f"missing binary {bin_dir}/{f}")
        reads_grace = binary_reads(worker_bin, GRACE_ENV)
        reads_lease = binary_reads(worker_bin, LEASE_ENV)
        if a.batch_size is None:
            a.batch_size = 10 if a.queue_first else template_batch_size()
        lease = a.lease if reads_lease else HARD_CODED["lease_s"]
        if a.worker_timeout is None:
            a.worker_timeout = 30.0
        if a.worker_timeout < 20:
            raise SystemExit("--worker-timeout must be at least 20 s: the worker starts a record only if "
                             "its worst case (16 s of forwarding + 2 s of store calls) fits before the deadline")
        if a.visibility is None:
            a.visibility = int(max(a.worker_timeout, lease // 4 + 1))
        if a.worker_timeout > a.visibility:
            raise SystemExit("--worker-timeout must not exceed --visibility (AWS refuses such an event source)")
        if lease <= a.worker_timeout:
            self.note(f"the worker lease ({lease} s) does not outlast the worker timeout ({a.worker_timeout:g} s): "
                      "two workers may then process one event at once, and the harness will count it")
        self.settings = {
            "lock_s": a.lock_seconds,
            "grace_s": a.sweep_grace if reads_grace else HARD_CODED["grace_s"],
            "lease_s": lease,
            "grace_configurable": reads_grace, "lease_configurable": reads_lease,
            "visibility_s": a.visibility, "worker_timeout_s": a.worker_timeout,
            "webhook_timeout_s": a.webhook_timeout, "sweep_interval_s": a.sweep_interval,
            "max_receives": 5, "batch_size": a.batch_size, "queue_first": a.queue_first,
        }
        if not reads_grace or not reads_lease:
            self.note(f"event-worker does not read {GRACE_ENV if not reads_grace else ''} "
                      f"{LEASE_ENV if not reads_lease else ''}: the hard-coded sweep grace "
                      f"{self.settings['grace_s']} s and lease {self.settings['lease_s']} s apply, "
                      "so quiescence can take minutes")
        self.moto = Moto(self.run_dir)
        ddb, sqs = self.moto.client("dynamodb"), self.moto.client("sqs")
        self.queue_url = create_resources(ddb, sqs, TABLE)
        sqs.set_queue_attributes(QueueUrl=self.queue_url, Attributes={"VisibilityTimeout": str(a.visibility)})
        self.queue_arn = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.dlq_url = sqs.get_queue_url(QueueName="twilio-dlq")["QueueUrl"]
        self.receiver = Receiver(a.seed, a.receiver_fail, a.receiver_stall)
        self.faults = FaultConfig(a.fault_rate, a.seed)
        moto_port = self.moto.port

        base_env = lambda_env(bin_dir, self.queue_url, a.auth_token, a.lock_seconds,
                              queue_first=a.queue_first, log_level="info")
        self.pools = {}
        for name in FUNCTIONS:
            worker = name == "event-worker"
            env = dict(base_env, AWS_LAMBDA_FUNCTION_NAME=name,
                       AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256" if worker else "128",
                       AWS_LAMBDA_LOG_GROUP_NAME=f"/aws/lambda/{name}")
            if worker:
                env[GRACE_ENV] = str(a.sweep_grace)
                env[LEASE_ENV] = str(a.lease)
            self.pools[name] = FunctionPool(
                name, os.path.join(bin_dir, name), env,
                timeout_s=a.worker_timeout if worker else a.webhook_timeout,
                max_instances=(a.pollers + 2) if worker else a.concurrency,
                log_dir=self.log_dir, rng=random.Random(f"{a.seed}:kills:{name}"),
                # the k-th AWS call to kill at: a webhook makes 2 (PutItem, SendMessage), the
                # worker about 4 per record (lease, state read, state write, finish)
                kill_rate=a.kill_rate, kill_calls=min(8, 4 * a.batch_size) if worker else 2,
                proxy_factory=lambda inst: FaultProxy(inst, self.faults, "127.0.0.1", moto_port),
                env_for_instance=(lambda inst: {"FORWARD_URL": self.receiver.url(inst.name)})
                if worker and not a.queue_first else None,
                note=self.note)

    # --- the worker's event sources ----------------------------------------------------------
    def invoke_worker(self, payload: bytes, kind: str, tag):
        with self.lock:
            self.worker_inflight += 1
        try:
            inv = self.pools["event-worker"].invoke(payload, tag=tag)
        finally:
            with self.lock:
                self.worker_inflight -= 1
        rec = inv.summary()
        rec["kind"] = kind
        with self.lock:
            self.invocations.append(rec)
        return inv

    def poller(self, n):
        sqs = self.moto.client("sqs")
        while not self.stop.is_set():
            try:
                with MOTO_LOCK:  # short polls: a long poll would hold the lock
                    r = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=self.args.batch_size,
                                            WaitTimeSeconds=0,
                                            AttributeNames=["All"], MessageAttributeNames=["All"])
            except Exception as e:
                self.note(f"poller {n}: receive failed: {e!r}")
                time.sleep(1)
                continue
            msgs = r.get("Messages", [])
            if not msgs:
                time.sleep(0.3)
                continue
            records = []
            keys = []
            for m in msgs:
                try:
                    keys.append(json.loads(m["Body"])["event"]["key"])
                except (ValueError, KeyError, TypeError):
                    keys.append(None)
                attrs = m.get("Attributes", {})
                records.append({
                    "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                    "attributes": {
                        "ApproximateReceiveCount": attrs.get("ApproximateReceiveCount", "1"),
                        "SentTimestamp": attrs.get("SentTimestamp", str(int(time.time() * 1000))),
                        "SenderId": attrs.get("SenderId", "AROAEXAMPLE:sms-webhook"),
                        "ApproximateFirstReceiveTimestamp": attrs.get("ApproximateFirstReceiveTimestamp",
                                                                      str(int(time.time() * 1000))),
                    },
                    "messageAttributes": {}, "md5OfBody": m.get("MD5OfBody", ""), "eventSource": "aws:sqs",
                    "eventSourceARN": self.queue_arn, "awsRegion": "us-east-1",
                })
            inv = self.invoke_worker(json.dumps({"Records": records}).encode(), "batch", keys)
            self.batches["batches"] += 1
            self.batches["messages"] += len(records)
            if inv.outcome != "ok":
                self.batches[f"batch_{inv.outcome}"] += 1
                continue  # the whole batch comes back after its visibility timeout
            try:
                failed = {f["itemIdentifier"] for f in (json.loads(inv.body).get("batchItemFailures") or [])}
            except (ValueError, AttributeError, KeyError, TypeError):
                failed = {m["MessageId"] for m in msgs}
            self.batches["item_failures"] += len(failed)
            done = [m for m in msgs if m["MessageId"] not in failed]
            for i in range(0, len(done), 10):
                chunk = done[i:i + 10]
                try:
                    with MOTO_LOCK:
                        sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                            {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]} for j, m in enumerate(chunk)])
                except Exception as e:
                    self.note(f"poller {n}: delete failed: {e!r}")

    def sweeper(self):
        with open(os.path.join(ROOT, "events", "event-worker.schedule.json")) as f:
            template = json.load(f)
        while not self.stop.wait(self.args.sweep_interval):
            ev = dict(template, id=str(uuid.uuid4()), time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            inv = self.invoke_worker(json.dumps(ev).encode(), "sweep", None)
            self.batches["sweeps"] += 1
            if inv.outcome != "ok":
                self.batches[f"sweep_{inv.outcome}"] += 1

    # --- quiescence --------------------------------------------------------------------------
    def pending_records(self, ddb):
        out = []
        kw = dict(TableName=TABLE, ConsistentRead=True, FilterExpression="attribute_exists(pending)",
                  ProjectionExpression="pk, lock_until, sweeps, lease_until")
        while True:
            r = ddb.scan(**kw)
            out += r.get("Items", [])
            if "LastEvaluatedKey" not in r:
                return out
            kw["ExclusiveStartKey"] = r["LastEvaluatedKey"]

    def queue_depth(self, sqs):
        a = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed"])["Attributes"]
        return sum(int(v) for v in a.values())

    def quiesce(self):
        s = self.settings
        timeout = self.args.quiesce_timeout or (
            s["lock_s"] + 3 * s["grace_s"] + s["lease_s"] + 4 * s["visibility_s"] + 3 * s["sweep_interval_s"] + 30)
        log(f"waiting for quiescence (at most {timeout:.0f} s)")
        ddb, sqs = self.moto.client("dynamodb"), self.moto.client("sqs")
        # The timeout counts from the last progress (a backlog draining is not a stall), up to
        # a hard cap: with one record per worker invocation (the template's batch size with
        # FORWARD_URL) a long run's backlog takes minutes to drain through the harness.
        deadline = time.time() + timeout
        hard_cap = time.time() + max(timeout, 1800)
        best = None
        quiet = 0
        last = None
        while time.time() < min(deadline, hard_cap):
            depth = self.queue_depth(sqs)
            pending = self.pending_records(ddb)
            if best is None or depth + len(pending) < best:
                best = depth + len(pending)
                deadline = time.time() + timeout
            now_ms = time.time() * 1000
            parked = [p for p in pending if int(p["lock_until"]["N"]) > now_ms + 3600_000]
            state = (depth, len(pending), len(parked), self.worker_inflight)
            if state != last:
                log(f"  queue {depth}, pending records {len(pending)} (parked {len(parked)}), worker invocations {self.worker_inflight}")
                last = state
            if depth == 0 and self.worker_inflight == 0 and len(pending) == len(parked):
                quiet += 1
                if quiet >= 3:
                    return True, timeout
            else:
                quiet = 0
            time.sleep(2)
        return False, timeout

    # --- the run -----------------------------------------------------------------------------
    def run(self, bin_dir):
        a = self.args
        self.setup(bin_dir)
        log(f"run dir {self.run_dir}")
        log(f"settings: {json.dumps(self.settings)}")
        events = generate(a.events, a.seed)
        threads = [threading.Thread(target=self.poller, args=(i,), daemon=True, name=f"poller-{i}")
                   for i in range(a.pollers)]
        threads.append(threading.Thread(target=self.sweeper, daemon=True, name="sweeper"))
        for t in threads:
            t.start()

        def invoke(function, payload, tag):
            inv = self.pools[function].invoke(payload, tag=tag)
            rec = inv.summary()
            rec["kind"] = "webhook"
            with self.lock:
                self.invocations.append(rec)
            return inv

        sender = Sender(events, invoke, a.seed, a.rate, a.concurrency, dup_rate=a.dup_rate, log=self.note,
                        token=a.auth_token)
        t_send = time.time()
        log(f"sending {len(events)} events at {a.rate:g}/s with {a.concurrency} senders")
        progress = threading.Thread(target=self.progress, args=(events,), daemon=True)
        progress.start()
        threading.Thread(target=self.watchdog, daemon=True).start()
        sender.run()
        self.t_sent = time.time()
        log(f"all sent in {self.t_sent - t_send:.0f} s")
        converged, timeout = self.quiesce()
        self.t_quiet = time.time()
        self.stop.set()
        for t in threads:
            t.join(a.worker_timeout + 15)
        for pool in self.pools.values():
            pool.close()
        self.pool_stats = [(p.name, len(p.invocations), p.cold_starts) for p in self.pools.values()]
        t_end = time.time()
        items, dlq_keys = self.snapshot()
        self.moto.stop()
        self.receiver.shutdown()
        with open(os.path.join(self.run_dir, "state.json"), "w") as f:
            json.dump({"argv": sys.argv[1:], "args": vars(a), "settings": self.settings, "notes": self.notes,
                       "batches": self.batches, "fault_counts": dict(self.faults.counts),
                       "pool_stats": self.pool_stats, "t_start": self.t_start, "t_sent": self.t_sent,
                       "t_quiet": self.t_quiet, "t_end": t_end, "converged": converged, "timeout": timeout,
                       "items": items, "dlq_keys": dlq_keys}, f)
        return self.report(events, items, dlq_keys, converged, timeout, t_end)

    def watchdog(self):
        """A function that cannot start (configuration refused at init) would make every
        invocation fail for minutes: stop at once and say why."""
        while not self.stop.wait(1):
            for pool in self.pools.values():
                if pool.init_failures >= 3 and pool.ok_invocations == 0:
                    log(f"FATAL: {pool.name} cannot start: {pool.last_init_error or 'no /next within the init timeout'}; "
                        f"see {self.log_dir}")
                    for p in self.pools.values():
                        p.close()
                    self.moto.stop()
                    os._exit(2)

    def progress(self, events):
        while not self.stop.wait(15):
            done = sum(1 for e in events if e.attempts)
            acc = sum(1 for e in events if e.accepted)
            log(f"  progress: {done}/{len(events)} delivered at least once, {acc} accepted, "
                f"{sum(self.faults.counts[k] for k in ('throttle', 'server_error', 'timeout', 'reset', 'lost_answer'))} faults, "
                f"{self.batches['batches']} batches, {self.batches['sweeps']} sweeps")
            if self.t_sent_set():
                return

    def t_sent_set(self):
        return hasattr(self, "t_sent")

    def snapshot(self):
        ddb, sqs = self.moto.client("dynamodb"), self.moto.client("sqs")
        items = []
        kw = dict(TableName=TABLE, ConsistentRead=True)
        while True:
            r = ddb.scan(**kw)
            items += r.get("Items", [])
            if "LastEvaluatedKey" not in r:
                break
            kw["ExclusiveStartKey"] = r["LastEvaluatedKey"]
        dlq = []
        for _ in range(1000):
            r = sqs.receive_message(QueueUrl=self.dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=600)
            msgs = r.get("Messages", [])
            if not msgs:
                break
            for m in msgs:
                try:
                    dlq.append(json.loads(m["Body"])["event"]["key"])
                except (ValueError, KeyError, TypeError):
                    dlq.append(None)
        return items, dlq

    # --- the verdict -------------------------------------------------------------------------
    def report(self, events, items, dlq_keys, converged, timeout, t_end):
        a, s = self.args, self.settings
        trace = self.faults.trace
        result = check.analyse(events, items, self.receiver.log, trace, self.invocations, dlq_keys,
                               s, t_end, self.log_dir)
        c = result["counts"]
        kinds = collections.Counter(e.kind for e in events)
        whats = collections.Counter()
        for e in events:
            for at in e.attempts:
                whats[at["what"]] += 1
        kills = collections.Counter()
        timeouts = collections.Counter()
        for inv in self.invocations:
            if inv.get("kill"):
                kills[(inv["function"], inv["kill"]["phase"])] += 1
            if inv["outcome"] == "timeout":
                timeouts[inv["function"]] += 1
        n_kills = sum(kills.values())
        n_inv = len(self.invocations)
        eligible = sum(1 for e in trace if self.faults.eligible(e["fn"], e["op"]))
        faults = self.faults.counts
        n_faults = sum(faults[k] for k in ("throttle", "server_error", "timeout", "reset", "lost_answer"))
        rec = self.receiver.log
        failures = c["lost"] + c["doubled"] + c["half-done"] + c["stranded"]
        wall = getattr(self, "wall", None) or time.time() - self.t_start
        rows = [
            ("events sent", f"{len(events)} (" + ", ".join(f"{k} {kinds[k]}" for k in KINDS) + ")"),
            ("webhook requests", f"{sum(whats.values())}: " + ", ".join(f"{k} {v}" for k, v in sorted(whats.items()))),
            ("accepted (2xx) / only errors", f"{c['accepted']} / {c['only_errors']} "
             f"(of these: {c['only_errors_absent']} absent, {c['only_errors_complete']} complete)"),
            ("invocations", f"{n_inv} ({', '.join(f'{name} {n}' for name, n, _ in self.pool_stats)}); "
             f"cold starts {sum(c for _, _, c in self.pool_stats)}"),
            ("AWS calls through the proxy", f"{len(trace)}, of which eligible for faults {eligible}"),
            ("faults injected", f"{n_faults} ({n_faults / max(1, eligible):.1%} of eligible calls)"),
            ("  by kind", ", ".join(f"{k} {faults[k]}" for k in ("throttle", "server_error", "timeout", "reset", "lost_answer"))
             + " (lost answers: " + ", ".join(f"{k} {faults['lost_answer:' + k]}" for k in ("reset", "500", "stall")) + ")"),
            ("kills (SIGKILL mid-invocation)", f"{n_kills} ({n_kills / max(1, n_inv):.1%} of invocations): "
             + ", ".join(f"{f} {p} {n}" for (f, p), n in sorted(kills.items()))),
            ("function timeouts", ", ".join(f"{f} {n}" for f, n in sorted(timeouts.items())) or "0"),
            ("worker", f"{self.batches['batches']} batches ({self.batches['messages']} messages, "
             f"{self.batches['item_failures']} item failures, "
             f"{sum(v for k, v in self.batches.items() if k.startswith('batch_'))} failed batches), "
             f"{self.batches['sweeps']} sweeps ({sum(v for k, v in self.batches.items() if k.startswith('sweep_'))} failed, "
             f"{sum(result['swept'].values())} re-sends)"),
            ("receiver", f"{len(rec)} posts: {sum(r['decision'] == 'ok' for r in rec)} 2xx, "
             f"{sum(r['decision'] == 'fail' for r in rec)} 500, {sum(r['decision'] == 'stall' for r in rec)} stalled"),
            ("events re-sent by the sweeper", str(len(result["swept"]))),
            ("messages in the DLQ at the end", str(len(dlq_keys))),
            ("**lost**", f"**{c['lost']}**"),
            ("**doubled**", f"**{c['doubled']}**"),
            ("**half-done**", f"**{c['half-done']}**"),
            ("**stranded** (2xx, own record, never enqueued)", f"**{c['stranded']}**"),
            ("most forwards of one event", f"{result['max_forwards'][0]} (`{result['max_forwards'][1]}`); "
             f"events forwarded with two different bodies: {c['forward_bodies_differ']}"),
            ("sweeps that returned an error", str(sum(1 for i in result["failed_sweeps"] if i["outcome"] == "error"))),
            ("PutItem retries that found their own record", f"{len(result['self_dups'])} "
             f"({sum(e['enqueued_after'] for e in result['self_dups'])} then enqueued it as new)"),
            ("claims over a live worker lease", f"{len(result['lease_wipes'])} "
             f"({sum(w['holder_active'] for w in result['lease_wipes'])} while the holder was still running)"),
            ("lease calls retried into a live lease (ConditionalCheckFailed; the code takes its own lease, recognised by lease_owner, as Ready)", str(len(result["own_lease"]))),
            ("sweep counts added twice by one retried call", str(len(result["double_sweep_count"]))),
            ("stray records / applied keys", f"{len(result['stray_records'])} / {len(result['stray_applied'])}"),
            ("quiescence", ("reached" if converged else f"NOT reached within {timeout:.0f} s")
             + f" {self.t_quiet - self.t_sent:.0f} s after the last send"),
            ("wall time", f"{wall:.0f} s"),
        ]
        # A harness that cannot get its webhooks accepted (refused token, bad signature, broken
        # configuration) would "pass" with nothing to check.
        sane = c["accepted"] >= 0.5 * len(events)
        if not sane:
            self.note(f"only {c['accepted']} of {len(events)} events were accepted: the run checks nothing "
                      "(refused signatures or configuration? see the function logs)")
        verdict = "PASS" if failures == 0 and converged and sane else "FAIL"
        md = [f"## Chaos run: {verdict}", "",
              f"`python3 scripts/chaos/run.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(self.t_start))}, "
              f"seed {a.seed}, fault rate {a.fault_rate:g}, kill rate {a.kill_rate:g}, "
              + (f"binaries: {a.bin_label}" if getattr(a, "bin_label", None) else f"binaries from `{a.bin_dir}`"), "",
              "Settings: " + ", ".join(f"{k}={v}" for k, v in s.items()), "",
              "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
        if self.notes:
            md += ["", "Notes:"] + [f"- {n}" for n in self.notes[:30]]
        detail = list(md)
        if result["rows"]:
            detail += ["", f"### Failing events ({len(result['rows'])})", ""]
            for row in result["rows"][:200]:
                detail.append(check.explain(row))
        if result["self_dups"]:
            detail += ["", "### PutItem retries that found their own record (first 20)", ""]
            for e in result["self_dups"][:20]:
                detail.append(f"- `{e['key']}` {e['inst']} attempt {e['attempt']}: "
                              + ("then enqueued it" if e["enqueued_after"] else "answered without enqueuing"))
        if result["lease_wipes"]:
            detail += ["", "### Claims over a live worker lease (first 20)", ""]
            for e in result["lease_wipes"][:20]:
                detail.append(f"- `{e['key']}` claimed by {e['by']} while {e['lease_holder']} held the lease"
                              + (" and was still running" if e["holder_active"] else " (its invocation had ended)"))
        for title, rows_ in (("Lease retries that found their own lease", result["own_lease"]),
                             ("Sweep counts added twice", result["double_sweep_count"])):
            if rows_:
                detail += ["", f"### {title} (first 20)", ""]
                detail += [f"- `{e['key']}` {e['inst']}" for e in rows_[:20]]
        if result["failed_sweeps"]:
            detail += ["", f"### Failed sweeps ({len(result['failed_sweeps'])})", ""]
            for i in result["failed_sweeps"][:20]:
                detail.append(f"- {i['instance']} {i['outcome']}"
                              + (f" kill={i['kill']}" if i.get("kill") else "")
                              + (f": {i['error']}" if i.get("error") else ""))
        self.write(events, result, md, detail)
        print("\n".join(md), flush=True)
        if a.results:
            with open(a.results, "w") as f:
                f.write("# Chaos harness results\n\nWritten by `scripts/chaos/run.py --mode long`; "
                        "see scripts/chaos/README.md for what each line means.\n\n")
                f.write("\n".join(md) + "\n")
            log(f"results written to {a.results}")
        log(f"details: {os.path.join(self.run_dir, 'report.md')}")
        return 0 if verdict == "PASS" else 1

    def write(self, events, result, md, detail):
        def dump(name, rows):
            with open(os.path.join(self.run_dir, name), "w") as f:
                for r in rows:
                    f.write(json.dumps(r, default=str) + "\n")
        dump("events.jsonl", [e.to_json() for e in events])
        dump("trace.jsonl", self.faults.trace)
        dump("receiver.jsonl", self.receiver.log)
        dump("invocations.jsonl", self.invocations)
        dump("failing.jsonl", result["rows"])
        with open(os.path.join(self.run_dir, "report.md"), "w") as f:
            f.write("\n".join(detail) + "\n")


def git_rev():
    # GIT_OPTIONAL_LOCKS=0: `git status` must not refresh (write) the index of a tree that
    # someone else is working in.
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             env=env).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "shared", "functions"],
                               cwd=ROOT, capture_output=True, text=True, env=env).stdout.strip()
        return rev + ("+uncommitted changes" if dirty else "")
    except OSError:
        return "?"


def reanalyse(run_dir, results=None):
    """Re-run the checks and the report on a finished run's files (no processes started)."""
    from twilio_sender import Event

    def load(name):
        with open(os.path.join(run_dir, name)) as f:
            return [json.loads(line) for line in f if line.strip()]

    with open(os.path.join(run_dir, "state.json")) as f:
        st = json.load(f)
    args = argparse.Namespace(**st["args"])
    args.results = results
    h = Harness.__new__(Harness)
    h.args, h.run_dir, h.log_dir = args, run_dir, os.path.join(run_dir, "logs")
    h.settings, h.notes, h.batches = st["settings"], st["notes"], collections.Counter(st["batches"])
    h.pool_stats, h.t_start, h.t_sent, h.t_quiet = st["pool_stats"], st["t_start"], st["t_sent"], st["t_quiet"]
    h.wall = st["t_end"] - st["t_start"]
    h.faults = FaultConfig(args.fault_rate, args.seed)
    h.faults.trace = load("trace.jsonl")
    h.faults.counts = collections.Counter(st["fault_counts"])
    h.receiver = argparse.Namespace(log=load("receiver.jsonl"))
    h.invocations = load("invocations.jsonl")
    events = []
    for d in load("events.jsonl"):
        e = Event(d["kind"], d["endpoint"], [], d["key"], d["state_id"], None, 0)
        e.idx, e.attempts, e.accepted, e.accepted_by = d["idx"], d["attempts"], d["accepted"], d["accepted_by"]
        events.append(e)
    sys.argv = [sys.argv[0]] + st["argv"]
    return h.report(events, st["items"], st["dlq_keys"], st["converged"], st["timeout"], st["t_end"])


def main(argv=None):
    if argv is None and len(sys.argv) >= 3 and sys.argv[1] == "--reanalyse":
        return reanalyse(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    args = parse_args(argv)
    bin_dir = build(args)
    h = Harness(args)
    try:
        return h.run(bin_dir)
    finally:
        for pool in getattr(h, "pools", {}).values():
            pool.close()
        if getattr(h, "moto", None) and h.moto.proc.poll() is None:
            h.moto.stop()


if __name__ == "__main__":
    sys.exit(main())
