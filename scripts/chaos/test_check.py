#!/usr/bin/env python3
"""Self-test of the chaos checker on made-up runs: each verdict (complete, lost, half-done,
doubled, stranded) is reached exactly when it should be, so a failing chaos run is the code's
fault and a passing one is not the checker's blindness. Plain asserts: `python3 test_check.py`."""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import check  # noqa: E402
from twilio_sender import Event  # noqa: E402

SETTINGS = {"lease_s": 60, "grace_s": 120, "lock_s": 11}


def event(key, accepted=True, attempts=None, state="msg#SM1"):
    e = Event("sms", "sms", [], key, state, "tok", 0)
    e.idx = 0
    e.accepted = accepted
    e.accepted_by = "primary" if accepted else None
    e.attempts = attempts or []
    return e


def record(key, processed=True):
    item = {"pk": {"S": key}, "event": {"S": "{}"}, "attempt": {"S": "a1"}, "lock_until": {"N": "1"}}
    if processed:
        item["processed_at"] = {"N": "2"}
    else:
        item["pending"] = {"S": "1"}
    return item


def state(sid, keys):
    timeline = [{"event_key": k, "status": "x", "sequence": None, "stage": 1, "error_code": None,
                 "received_at": 1} for k in keys]
    return {"pk": {"S": f"state#{sid}"}, "state": {"S": json.dumps({"id": sid, "timeline": timeline})},
            "version": {"N": "1"}}


def forward(key, t0, path="/fwd/event-worker-0", decision="ok", idem=None, t1=None):
    return {"t0": t0, "t1": t0 + 0.01 if t1 is None else t1, "path": path, "idem": idem or key, "key": key,
            "decision": decision, "answered": True}


def verdicts(events, items, rec=(), trace=(), settings=SETTINGS):
    with tempfile.TemporaryDirectory() as logs:
        r = check.analyse(events, items, list(rec), [dict(t) for t in trace], [], [], settings, 100.0, logs)
    return {row["key"]: sorted({p[0] for p in row["problems"]}) for row in r["rows"]}, r


def main():
    ok_attempt = [{"what": "primary", "fn": "sms-webhook", "status": 200, "outcome": "ok", "kill": None,
                   "inst": "sms-webhook#0", "inv": "i1", "t0": 0, "t1": 1}]
    # 1. complete
    v, r = verdicts([event("sms#SM1")], [record("sms#SM1"), state("msg#SM1", ["sms#SM1"])], [forward("sms#SM1", 1)])
    assert v == {}, v
    assert r["counts"]["complete"] == 1
    # 2. accepted, no record; 3. accepted, never processed; 4. processed without its fold;
    # 5. processed, never forwarded (only a 500 and a stall)
    v, _ = verdicts([event("sms#A"), event("sms#B"), event("sms#C"), event("sms#D")],
                    [record("sms#B", processed=False), record("sms#C"), record("sms#D"),
                     state("msg#SM1", ["sms#D"])],
                    [forward("sms#D", 1, decision="fail"), forward("sms#D", 2, decision="stall")])
    assert v == {"sms#A": ["lost"], "sms#B": ["lost"], "sms#C": ["lost"], "sms#D": ["lost"]}, v
    # 6. only errors: absent is fine, complete is fine, stored but pending is half-done
    v, r = verdicts([event("sms#E", accepted=False), event("sms#F", accepted=False), event("sms#G", accepted=False)],
                    [record("sms#F"), state("msg#SM1", ["sms#F"]), record("sms#G", processed=False)],
                    [forward("sms#F", 1)])
    assert v == {"sms#G": ["half-done"]}, v
    assert r["counts"]["only_errors_absent"] == 1 and r["counts"]["only_errors_complete"] == 1
    # 7. doubled: applied twice; in two state records; wrong Idempotency-Key; two environments at once
    v, _ = verdicts([event("sms#H"), event("sms#I"), event("sms#J"), event("sms#K"), event("sms#L")],
                    [record(k) for k in ("sms#H", "sms#I", "sms#J", "sms#K", "sms#L")]
                    + [state("msg#SM1", ["sms#H", "sms#H", "sms#I", "sms#J", "sms#K", "sms#L"]),
                       state("msg#SM2", ["sms#I"])],
                    [forward("sms#H", 1), forward("sms#I", 1), forward("sms#J", 1, idem="sms#other"),
                     forward("sms#K", 1.0, path="/fwd/event-worker-1", t1=7.0, decision="stall"),
                     forward("sms#K", 3.0, path="/fwd/event-worker-2"),
                     # L: one environment retrying after its own stalled forward is not doubled,
                     # nor is a second environment after the first one's 5 s timeout.
                     forward("sms#L", 1.0, path="/fwd/event-worker-1", t1=7.0, decision="stall"),
                     forward("sms#L", 6.2, path="/fwd/event-worker-1"),
                     forward("sms#L", 6.5, path="/fwd/event-worker-2")])
    assert v == {"sms#H": ["doubled"], "sms#I": ["doubled"], "sms#J": ["doubled"], "sms#K": ["doubled"]}, v
    # 8. stranded: the claim's answer was lost, the SDK's retry found its own record, the
    # function answered 200 and never tried SQS. Not stranded: the same with an enqueue that
    # failed (the fallback's fail-safe), or with a last claim that failed (a store error).
    base = {"fn": "sms-webhook", "inst": "sms-webhook#0", "inv": "i1", "call": 1, "upd": None, "sub": None,
            "kill": None, "old_attempt": None, "attempt": "a1"}
    stranded = [dict(base, t=1, op="DynamoDB.PutItem", key="sms#M", fault="lost_answer", status=200, err=None),
                dict(base, t=2, op="DynamoDB.PutItem", key="sms#M", fault=None, status=400,
                     err="ConditionalCheckFailedException", old_attempt="a1")]
    tried = [dict(t, inv="i2", key="sms#N") for t in stranded] + [
        dict(base, inv="i2", t=3, op="SQS.SendMessage", key="sms#N", fault="throttle", status=400, err="RequestThrottled")]
    failed = [dict(stranded[0], inv="i3", key="sms#O"),
              dict(stranded[1], inv="i3", key="sms#O", fault="timeout", status=None, err=None)]
    evs = [event("sms#M", attempts=ok_attempt), event("sms#N", attempts=[dict(ok_attempt[0], inv="i2")]),
           event("sms#O", attempts=[dict(ok_attempt[0], inv="i3")])]
    items = [record(k) for k in ("sms#M", "sms#N", "sms#O")] + [state("msg#SM1", ["sms#M", "sms#N", "sms#O"])]
    v, r = verdicts(evs, items, [forward(k, 1) for k in ("sms#M", "sms#N", "sms#O")], stranded + tried + failed)
    assert v == {"sms#M": ["stranded"]}, v
    assert len(r["self_dups"]) == 2 and not any(e["enqueued_after"] for e in r["self_dups"]), r["self_dups"]
    # 9. a claim over a live lease, and a begin_processing retry Busy on its own lease
    w = dict(base, fn="event-worker", inst="event-worker#0", inv="w1")
    trace = [dict(w, t=1, op="DynamoDB.UpdateItem", key="sms#P", upd="SET lease_until = :until", fault="lost_answer",
                  status=200, err=None),
             dict(w, t=2, op="DynamoDB.UpdateItem", key="sms#P", upd="SET lease_until = :until", fault=None,
                  status=400, err="ConditionalCheckFailedException"),
             dict(base, inv="i9", t=20, op="DynamoDB.PutItem", key="sms#P", fault=None, status=200, err=None)]
    _, r = verdicts([event("sms#P")], [record("sms#P"), state("msg#SM1", ["sms#P"])], [forward("sms#P", 30)], trace)
    assert [e["key"] for e in r["own_lease"]] == ["sms#P"], r["own_lease"]
    assert [e["key"] for e in r["lease_wipes"]] == ["sms#P"], r["lease_wipes"]
    # 10. QUEUE_FIRST: complete = folded once, whatever the record says (no processed mark, no
    # forward); accepted and never folded is lost; a record without a fold, for an event that
    # only got errors, is the reply cache of copies that never came (not half-done); folded
    # twice is doubled.
    qf = dict(SETTINGS, queue_first=True)
    reply_only = {"pk": {"S": "sms#R"}, "event": {"S": "{}"}, "attempt": {"S": "a1"}}
    v, r = verdicts([event("sms#Q"), event("sms#R", accepted=False), event("sms#S"), event("sms#T")],
                    [dict(reply_only, pk={"S": "sms#Q"}), reply_only, dict(reply_only, pk={"S": "sms#S"}),
                     state("msg#SM1", ["sms#Q", "sms#T", "sms#T"])], settings=qf)
    assert v == {"sms#S": ["lost"], "sms#T": ["doubled"]}, v
    assert r["counts"]["complete"] == 1
    print("chaos checker self-test: 10 passed, 0 failed")


if __name__ == "__main__":
    main()
