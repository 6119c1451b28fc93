"""A Twilio-like sender: seeded events with unique Sids, signed with the test token, as API
Gateway HTTP API (payload 2.0) events; retries, fallbacks and exact duplicates as Twilio does.

Kinds: inbound SMS, inbound voice call, message status, call status, recording status and
conference status callbacks. Events of one message, call or conference share its state
record and arrive interleaved and out of order, so the worker's state fold races itself.
"""
import base64
import heapq
import json
import random
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor

from twilio.request_validator import RequestValidator

from lambda_emulator import http_response_of

TEST_TOKEN = "12345678901234567890123456789012"
HOST = "abc123.execute-api.us-east-1.amazonaws.com"
BASE_URL = f"https://{HOST}"
ACCOUNT = "AC00000000000000000000000000000000"
KINDS = ("sms", "voice", "message_status", "call_status", "recording", "conference")
FUNCTION_OF = {"sms": "sms-webhook", "voice": "voice-webhook", "status": "status-callback",
               "fallback": "fallback-webhook"}
WORDS = "hello is this thing on see you at noon bring the keys thanks ok yes no later".split()


class Event:
    __slots__ = ("idx", "kind", "endpoint", "params", "key", "state_id", "token", "slot",
                 "attempts", "accepted", "accepted_by", "lock", "dups")

    def __init__(self, kind, endpoint, params, key, state_id, token, slot):
        self.idx = None
        self.kind = kind
        self.endpoint = endpoint
        self.params = params
        self.key = key
        self.state_id = state_id
        self.token = token
        self.slot = slot
        self.attempts = []
        self.accepted = False
        self.accepted_by = None
        self.lock = threading.Lock()
        self.dups = 0

    def to_json(self):
        return {"idx": self.idx, "kind": self.kind, "endpoint": self.endpoint, "key": self.key,
                "state_id": self.state_id, "accepted": self.accepted,
                "accepted_by": self.accepted_by, "attempts": self.attempts}


def _sid(prefix, rng):
    return prefix + "".join(rng.choice("0123456789abcdef") for _ in range(32))


def _phone(rng):
    return "+1415555" + "".join(rng.choice("0123456789") for _ in range(4))


def _stamp(rng):
    return f"Fri, 27 Nov 2026 14:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} +0000"


def _sms(rng, slot):
    sm = _sid("SM", rng)
    body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))
    params = [("ToCountry", "US"), ("ToState", "CA"), ("SmsMessageSid", sm), ("NumMedia", "0"),
              ("ToCity", "SAN FRANCISCO"), ("FromZip", "94105"), ("SmsSid", sm), ("FromState", "CA"),
              ("SmsStatus", "received"), ("FromCity", "SAN FRANCISCO"), ("Body", body),
              ("FromCountry", "US"), ("To", "+14155550199"), ("ToZip", "94105"),
              ("NumSegments", "1"), ("MessageSid", sm), ("AccountSid", ACCOUNT),
              ("From", _phone(rng)), ("ApiVersion", "2010-04-01")]
    return [Event("sms", "sms", params, f"sms#{sm}", f"msg#{sm}", None, slot)]


def _call(rng, slot):
    ca = _sid("CA", rng)
    caller = _phone(rng)
    events = [Event("voice", "voice", [
        ("AccountSid", ACCOUNT), ("ApiVersion", "2010-04-01"), ("CallSid", ca),
        ("CallStatus", "ringing"), ("Called", "+14155550199"), ("CalledCountry", "US"),
        ("Caller", caller), ("CallerCountry", "US"), ("Direction", "inbound"), ("From", caller),
        ("FromCity", "SAN FRANCISCO"), ("FromCountry", "US"), ("To", "+14155550199"),
        ("ToCountry", "US")], f"call#{ca}", f"call#{ca}", None, slot)]
    for seq, status in enumerate(["ringing", "in-progress", "completed"]):
        params = [("AccountSid", ACCOUNT), ("ApiVersion", "2010-04-01"), ("CallSid", ca),
                  ("CallStatus", status), ("CallbackSource", "call-progress-events"),
                  ("Direction", "inbound"), ("From", caller), ("To", "+14155550199"),
                  ("Timestamp", _stamp(rng)), ("SequenceNumber", str(seq))]
        if status == "completed":
            params += [("CallDuration", str(rng.randint(1, 300))), ("Duration", "1")]
        events.append(Event("call_status", "status", params, f"callstatus#{ca}#{seq}",
                            f"call#{ca}", None, slot + rng.uniform(0, 25)))
    if rng.random() < 0.5:
        re_ = _sid("RE", rng)
        events.append(Event("recording", "status", [
            ("AccountSid", ACCOUNT), ("CallSid", ca), ("RecordingSid", re_),
            ("RecordingUrl", f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Recordings/{re_}"),
            ("RecordingStatus", "completed"), ("RecordingDuration", str(rng.randint(1, 60))),
            ("RecordingChannels", "1"), ("RecordingStartTime", _stamp(rng)),
            ("RecordingSource", "RecordVerb")], f"recording#{re_}#completed", f"call#{ca}",
            None, slot + rng.uniform(0, 25)))
    return events


def _message_statuses(rng, slot):
    sm = _sid("SM", rng)
    to = _phone(rng)
    final = rng.choice(["delivered", "delivered", "undelivered"])
    events = []
    for status in ["queued", "sent", final]:
        params = [("AccountSid", ACCOUNT), ("ApiVersion", "2010-04-01"), ("From", "+14155550199"),
                  ("MessageSid", sm), ("MessageStatus", status), ("SmsSid", sm),
                  ("SmsStatus", status), ("To", to)]
        if status == "undelivered":
            params.append(("ErrorCode", "30003"))
        events.append(Event("message_status", "status", params, f"msgstatus#{sm}#{status}",
                            f"msg#{sm}", None, slot + rng.uniform(0, 25)))
    return events


def _conference(rng, slot):
    cf = _sid("CF", rng)
    name = rng.choice(["standup", "sales", "support"])
    events = []
    steps = [("participant-join", _sid("CA", rng)), ("participant-join", _sid("CA", rng)),
             ("participant-leave", None), ("conference-end", None)]
    for seq, (what, ca) in enumerate(steps, start=1):
        params = [("AccountSid", ACCOUNT), ("ConferenceSid", cf), ("FriendlyName", name),
                  ("StatusCallbackEvent", what), ("SequenceNumber", str(seq)),
                  ("Timestamp", _stamp(rng))]
        if ca:
            params.append(("CallSid", ca))
        events.append(Event("conference", "status", params, f"conference#{cf}#{what}#{seq}",
                            f"conf#{cf}", None, slot + rng.uniform(0, 25)))
    return events


SCENARIOS = [(_sms, 4), (_call, 2), (_message_statuses, 2), (_conference, 1)]


def generate(n: int, seed) -> list:
    """`n` events in sending order (seeded)."""
    rng = random.Random(f"{seed}:events")
    events = []
    slot = 0.0
    while len(events) < n + 10:
        make = rng.choices([s for s, _ in SCENARIOS], [w for _, w in SCENARIOS])[0]
        events += make(rng, slot)
        slot += 1.0
    events.sort(key=lambda e: e.slot)
    events = events[:n]
    for i, e in enumerate(events):
        e.idx = i
        e.token = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return events


def api_gateway_event(path: str, params, token: str, signature: str, request_id: str) -> bytes:
    """An API Gateway HTTP API (payload 2.0) event, as in events/*.http-api.json."""
    body = urllib.parse.urlencode(params).encode()
    now = time.time()
    return json.dumps({
        "body": base64.b64encode(body).decode(),
        "headers": {
            "content-type": "application/x-www-form-urlencoded",
            "host": HOST,
            "i-twilio-idempotency-token": token,
            "user-agent": "TwilioProxy/1.1",
            "x-forwarded-for": "54.172.60.1",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
            "x-twilio-signature": signature,
        },
        "isBase64Encoded": True,
        "rawPath": path,
        "rawQueryString": "",
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc123", "domainName": HOST,
            "domainPrefix": "abc123",
            "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "54.172.60.1", "userAgent": "TwilioProxy/1.1"},
            "requestId": request_id, "routeKey": f"POST {path}", "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "routeKey": f"POST {path}",
        "version": "2.0",
    }).encode()


class Sender:
    """Sends each event to its function; on failure calls the fallback (SMS, voice) or retries
    (status callbacks), and sends exact duplicates of some accepted events later."""

    def __init__(self, events, invoke, seed, rate, concurrency, dup_rate=0.05,
                 status_retries=1, retry_delay=(0.5, 15.0), dup_delay=(1.0, 20.0), log=None,
                 token=TEST_TOKEN):
        self.events = events
        self.invoke = invoke  # invoke(function, payload bytes, tag) -> Invocation
        self.seed = seed
        self.rate = rate
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="sender")
        self.validator = RequestValidator(token)
        self.dup_rate = dup_rate
        self.status_retries = status_retries
        self.retry_delay = retry_delay
        self.dup_delay = dup_delay
        self.log = log
        self.delayed = []  # heap of (due, seq, fn, args)
        self.cond = threading.Condition()
        self.seq = 0
        self.outstanding = 0
        self.requests = {}  # (event idx, variant) -> payload (exact duplicates resend it)

    # --- building requests -------------------------------------------------------------------
    def request(self, ev: Event, variant: str) -> bytes:
        """The primary request (`primary`) or the fallback one (`fallback`); built once, so a
        retry or duplicate is byte for byte the same request."""
        k = (ev.idx, variant)
        if k not in self.requests:
            rng = random.Random(f"{self.seed}:req:{ev.idx}:{variant}")
            if variant == "primary":
                path, params, token = "/" + ev.endpoint, ev.params, ev.token
            else:
                code = "11200" if ev.endpoint == "sms" else "11205"
                path = "/fallback"
                params = ev.params + [("ErrorCode", code), ("ErrorUrl", f"{BASE_URL}/{ev.endpoint}")]
                token = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            sig = self.validator.compute_signature(BASE_URL + path, dict(params))
            self.requests[k] = api_gateway_event(
                path, params, token, sig, str(uuid.UUID(int=rng.getrandbits(128), version=4)))
        return self.requests[k]

    # --- one attempt -------------------------------------------------------------------------
    def attempt(self, ev: Event, what: str, function: str, variant: str) -> bool:
        inv = self.invoke(function, self.request(ev, variant), ev.key)
        status, _ = http_response_of(inv)
        ok = 200 <= status < 300
        rec = {"what": what, "fn": function, "status": status, "outcome": inv.outcome,
               "kill": inv.kill, "inst": inv.instance.name if inv.instance else None,
               "inv": inv.request_id, "t0": inv.t_submit, "t1": inv.t_end}
        with ev.lock:
            ev.attempts.append(rec)
            if ok and not ev.accepted:
                ev.accepted, ev.accepted_by = True, what
        return ok

    def deliver(self, ev: Event, what: str = "primary", retries_left: int = None):
        """Twilio's behaviour for one delivery of a webhook."""
        rng = random.Random(f"{self.seed}:deliver:{ev.idx}:{what}:{len(ev.attempts)}")
        ok = self.attempt(ev, what, FUNCTION_OF[ev.endpoint], "primary")
        if not ok and ev.endpoint in ("sms", "voice"):
            ok = self.attempt(ev, what + "+fallback", FUNCTION_OF["fallback"], "fallback")
        elif not ok:
            retries_left = self.status_retries if retries_left is None else retries_left
            if retries_left > 0:
                self.later(rng.uniform(*self.retry_delay), self.deliver, ev, "retry", retries_left - 1)
                return
        if ok and not what.startswith("dup"):
            if rng.random() < self.dup_rate:
                ev.dups += 1
                self.later(rng.uniform(*self.dup_delay), self.deliver, ev, "dup", 0)

    # --- scheduling --------------------------------------------------------------------------
    def later(self, delay, fn, *args):
        with self.cond:
            self.seq += 1
            self.outstanding += 1
            heapq.heappush(self.delayed, (time.time() + delay, self.seq, fn, args))
            self.cond.notify_all()

    def _run(self, fn, *args):
        try:
            fn(*args)
        except Exception as e:  # a harness bug must not hang the run
            if self.log:
                self.log(f"sender error: {e!r}")
        finally:
            with self.cond:
                self.outstanding -= 1
                self.cond.notify_all()

    def run(self, stop_event=None):
        """Send every event at `rate` per second; returns when all deliveries, retries and
        duplicates are done."""
        t0 = time.time()
        with self.cond:
            self.outstanding += len(self.events)
        pending = list(enumerate(self.events))
        while True:
            now = time.time()
            while pending and t0 + pending[0][0] / self.rate <= now:
                _, ev = pending.pop(0)
                self.pool.submit(self._run, self.deliver, ev, "primary")
            with self.cond:
                while self.delayed and self.delayed[0][0] <= now:
                    _, _, fn, args = heapq.heappop(self.delayed)
                    self.pool.submit(self._run, fn, *args)
                if not pending and self.outstanding == 0:
                    break
                nxt = t0 + pending[0][0] / self.rate if pending else now + 0.5
                if self.delayed:
                    nxt = min(nxt, self.delayed[0][0])
                self.cond.wait(max(0.0, min(0.5, nxt - time.time())))
            if stop_event is not None and stop_event.is_set():
                break
        self.pool.shutdown(wait=True)
