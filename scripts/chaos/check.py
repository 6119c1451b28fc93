"""The verdict: every event checked against moto's table, the receiver's log and the proxy's
trace, after quiescence.

For each event the harness sent (by its dedup key):
  complete   its record is processed (no `pending`, `processed_at` set), its key is in exactly
             one state timeline exactly once (the state record its kind belongs to), and the
             receiver answered 2xx to at least one forward of it.
  lost       it got a 2xx (primary, fallback, retry or duplicate) and is not complete.
  half-done  it only ever got errors, and it is stored but not complete (absent is fine).
  doubled    its key is in a timeline more than once (or in two state records), the receiver
             saw more than one Idempotency-Key for it (or one that is not its key), or two
             worker environments forwarded it at overlapping times (the lease did not hold).
  stranded   it was acknowledged (2xx) by an invocation whose own PutItem had written its
             record, whose last PutItem answer reached it (no store error), that did not die,
             and that never tried to send it to SQS: it waits for the sweeper (a claim that
             found its own record after a retried PutItem).

Also reported as diagnostics, with evidence: PutItems that found their own record, claims that
overwrote a live worker lease, sweeps that failed, events re-sent by the sweeper.
"""
import collections
import glob
import json
import os

FORWARD_TIMEOUT_S = 5.0


def label(entry) -> str:
    """What a traced call was, in the code's terms."""
    op, upd = entry["op"], entry.get("upd") or ""
    if op == "DynamoDB.PutItem":
        return "save_state" if (entry.get("key") or "").startswith("state#") else "claim"
    if op == "DynamoDB.UpdateItem":
        if upd.startswith("SET lease_until = :until"):
            return "begin_processing"
        if upd.startswith("SET lease_until = :zero"):
            return "abandon_processing"
        if upd.startswith("SET processed_at"):
            return "finish_processing"
        if upd.startswith("SET lock_until = :zero"):
            return "release"
        if upd.startswith("SET lock_until = :l"):
            return "extend_lock"
        return "update"
    if op == "DynamoDB.GetItem":
        return "load_state" if (entry.get("key") or "").startswith("state#") else "get_record"
    if op == "DynamoDB.Query":
        return "stale_pending"
    if op == "SQS.SendMessage":
        return "enqueue" if entry["fn"] != "event-worker" else "sweep_enqueue"
    return op


def attr(item, name):
    v = item.get(name)
    if v is None:
        return None
    if "S" in v:
        return v["S"]
    if "N" in v:
        return int(v["N"])
    return v


def analyse(events, items, receiver_log, trace, invocations, dlq_keys, settings, t_end, log_dir):
    # QUEUE_FIRST (no slow work): the fold is the event's one effect, and all or nothing; the
    # record is only the reply cache of later copies (no processed mark), and nothing is
    # forwarded. Complete = folded exactly once into its state record; half-done cannot be.
    queue_first = bool(settings.get("queue_first"))
    by_pk = {attr(i, "pk"): i for i in items}
    event_keys = {e.key for e in events}

    # State timelines: event key -> [(state id, count)]
    applied = collections.Counter()
    applied_in = collections.defaultdict(set)
    for pk, item in by_pk.items():
        if not pk.startswith("state#"):
            continue
        state = json.loads(attr(item, "state") or "{}")
        for entry in state.get("timeline", []):
            applied[entry["event_key"]] += 1
            applied_in[entry["event_key"]].add(pk[len("state#"):])

    # Forwards per key.
    fwd = collections.defaultdict(list)
    for r in receiver_log:
        fwd[r.get("key") or r.get("idem")].append(r)

    # Proxy trace per key and per invocation.
    by_key = collections.defaultdict(list)
    by_inv = collections.defaultdict(list)
    for e in trace:
        e["what"] = label(e)
        if e.get("key"):
            by_key[e["key"]].append(e)
        if e.get("inv"):
            by_inv[e["inv"]].append(e)

    # --- defect signatures -----------------------------------------------------------------
    self_dups = [e for e in trace if e["what"] == "claim" and e.get("err") == "ConditionalCheckFailedException"
                 and e.get("attempt") and e.get("old_attempt") == e.get("attempt")]
    for e in self_dups:  # did the invocation then treat its own record as new and enqueue it?
        e["enqueued_after"] = any(c["what"] == "enqueue" and c.get("key") == e["key"] and c.get("status") == 200
                                  and c["t"] >= e["t"] for c in by_inv.get(e.get("inv"), []))
    inv_end = {i["request_id"]: i.get("t_end") for i in invocations}
    holder_inv = None
    lease_wipes = []
    for key, calls in by_key.items():
        if key.startswith("state#"):
            continue
        lease_until = None
        holder = None
        for c in sorted(calls, key=lambda c: c.get("tm") or c["t"]):  # in the order moto applied them
            if c.get("status") != 200:  # moto's answer: 200 = applied, whatever reached the caller
                continue
            if c["what"] == "begin_processing":
                lease_until, holder, holder_inv = c["t"] + settings["lease_s"], c["inst"], c.get("inv")
            elif c["what"] in ("finish_processing", "abandon_processing"):
                lease_until, holder = None, None
            elif c["what"] == "claim" and lease_until and c["t"] < lease_until:
                # Was the holder still working on it (its invocation not ended yet)?
                end = inv_end.get(holder_inv)
                lease_wipes.append({"key": key, "t": c["t"], "by": c["inst"], "lease_holder": holder,
                                    "holder_active": end is None or end > c["t"]})
                lease_until, holder = None, None
    # A retried call that finds what its own first try did: begin_processing whose answer was
    # lost, then Busy on its own lease (the job fails and the event waits for the lease to end);
    # extend_lock applied twice by one sweep (the sweep count runs ahead).
    own_lease = []
    double_sweep_count = []
    for inv_id, calls in by_inv.items():
        seen = {}
        for c in sorted(calls, key=lambda c: c["t"]):
            if c["what"] not in ("begin_processing", "extend_lock") or not c.get("key"):
                continue
            k = (c["what"], c["key"])
            if c["what"] == "begin_processing" and k in seen and c.get("err") == "ConditionalCheckFailedException":
                own_lease.append({"key": c["key"], "inst": c["inst"], "t": c["t"]})
            if c["what"] == "extend_lock" and k in seen and c.get("status") == 200:
                double_sweep_count.append({"key": c["key"], "inst": c["inst"], "t": c["t"]})
            if c.get("status") == 200 and c.get("fault") == "lost_answer":
                seen[k] = c
    swept = collections.Counter(e["key"] for e in trace if e["what"] == "sweep_enqueue" and e.get("status") == 200)
    sweeps = [i for i in invocations if i["function"] == "event-worker" and i.get("kind") == "sweep"]
    failed_sweeps = [i for i in sweeps if i["outcome"] != "ok"]

    # --- per event verdicts -----------------------------------------------------------------
    rows = []
    counts = collections.Counter()
    max_forwards = (0, None)
    for ev in events:
        item = by_pk.get(ev.key)
        stored = item is not None
        processed = stored and "pending" not in item and "processed_at" in item
        n_applied = applied[ev.key]
        in_states = applied_in.get(ev.key, set())
        recs = fwd.get(ev.key, [])
        delivered = [r for r in recs if r["decision"] == "ok" and r.get("answered", True)]
        idems = {r.get("idem") for r in recs}
        if len({r.get("body") for r in recs}) > 1:
            counts["forward_bodies_differ"] += 1
        if len(delivered) > max_forwards[0]:
            max_forwards = (len(delivered), ev.key)
        # Done at least once (a second application is "doubled", not "lost").
        if queue_first:
            done = n_applied >= 1 and ev.state_id in in_states
        else:
            done = processed and n_applied >= 1 and ev.state_id in in_states and bool(delivered)
        complete = done and n_applied == 1 and in_states == {ev.state_id}
        problems = []
        # doubled
        if n_applied > 1 or len(in_states) > 1:
            problems.append(("doubled", f"state fold applied {n_applied} times in {sorted(in_states)}"))
        if recs and idems != {ev.key}:
            problems.append(("doubled", f"Idempotency-Key values {sorted(map(str, idems))}"))
        overl = overlapping_forwards(recs)
        if overl:
            problems.append(("doubled", "forwarded by two worker environments at once: " + overl))
        # lost / half-done
        if not done:
            if queue_first:
                why = "never folded" if n_applied == 0 else f"folded into {sorted(in_states)}, expected {ev.state_id}"
            elif not stored:
                why = "no record"
            elif not processed:
                why = f"record never processed (pending, sweeps={attr(item, 'sweeps')})"
            elif n_applied == 0:
                why = "processed without its state fold"
            elif ev.state_id not in in_states:
                why = f"folded into {sorted(in_states)}, expected {ev.state_id}"
            elif not delivered:
                why = "processed, never forwarded (2xx) to the receiver"
            else:
                why = "incomplete"
            if ev.accepted:
                problems.append(("lost", why))
            elif (stored and not queue_first) or n_applied or delivered:
                problems.append(("half-done", why))
        # stranded: acknowledged by an invocation whose claim wrote the record, without enqueue.
        for a in ev.attempts:
            if not (200 <= a["status"] < 300) or a["outcome"] != "ok":
                continue
            calls = by_inv.get(a["inv"], [])
            # `status` is moto's answer (200: applied), even when the proxy lost it afterwards.
            claims = [c for c in calls if c["what"] == "claim" and c.get("key") == ev.key]
            wrote = any(c.get("status") == 200 for c in claims)
            # The function saw its last claim succeed or conflict (not a store error: then the
            # fallback's fail-safe 200 without an enqueue is the design, and the sweeper's job).
            saw_answer = bool(claims) and not claims[-1].get("fault") and not claims[-1].get("kill")
            tried = any(c["what"] == "enqueue" and c.get("key") == ev.key for c in calls)
            if wrote and saw_answer and not tried:
                problems.append(("stranded", f"{a['what']} via {a['fn']} answered {a['status']} after its own "
                                 "PutItem wrote the record, and never tried to send it to SQS"))
                break
        kinds = sorted({p[0] for p in problems})
        for k in kinds:
            counts[k] += 1
        if problems:
            rows.append({"key": ev.key, "kind": ev.kind, "accepted": ev.accepted,
                         "accepted_by": ev.accepted_by, "problems": problems,
                         "evidence": evidence(ev, item, by_key, by_inv, recs, swept, dlq_keys,
                                              t_end, log_dir)})
        counts["complete"] += bool(complete)
        counts["accepted"] += ev.accepted
        counts["only_errors"] += not ev.accepted
        counts["only_errors_absent"] += (not ev.accepted and not stored)
        counts["only_errors_complete"] += (not ev.accepted and bool(complete))

    stray = sorted(k for k in by_pk if not k.startswith("state#") and k not in event_keys)
    stray_applied = sorted(k for k in applied if k not in event_keys)
    return {
        "counts": counts, "rows": rows, "max_forwards": max_forwards,
        "self_dups": self_dups, "lease_wipes": lease_wipes, "swept": swept,
        "own_lease": own_lease, "double_sweep_count": double_sweep_count,
        "sweeps": len(sweeps), "failed_sweeps": failed_sweeps, "stray_records": stray,
        "stray_applied": stray_applied,
    }


def overlapping_forwards(recs) -> str:
    """Two forwards of one event from different worker environments whose requests overlap
    (each counted until answered, or until the forwarder's 5 s timeout)."""
    spans = sorted((r["t0"], min(r.get("t1", r["t0"] + FORWARD_TIMEOUT_S), r["t0"] + FORWARD_TIMEOUT_S),
                    r["path"]) for r in recs)
    for i, (a0, a1, ap) in enumerate(spans):
        for b0, b1, bp in spans[i + 1:]:
            if b0 >= a1:
                break
            if bp != ap:
                return f"{ap} [{a0:.3f}, {a1:.3f}] and {bp} [{b0:.3f}, {b1:.3f}]"
    return ""


def grep_logs(log_dir, key, limit=40):
    out = []
    for path in sorted(glob.glob(os.path.join(log_dir, "*.log"))):
        name = os.path.basename(path)
        with open(path, "rb") as f:
            for line in f:
                if key.encode() in line:
                    out.append(f"{name}: {line.decode('utf-8', 'replace').rstrip()[:400]}")
                    if len(out) >= limit:
                        return out
    return out


def evidence(ev, item, by_key, by_inv, recs, swept, dlq_keys, t_end, log_dir):
    calls = []
    for c in sorted(by_key.get(ev.key, []), key=lambda c: c["t"]):
        calls.append({k: c.get(k) for k in ("t", "inst", "what", "fault", "sub", "kill", "status", "err",
                                             "attempt", "old_attempt") if c.get(k) is not None})
    doc = {
        "attempts": ev.attempts,
        "record": {k: attr(item, k) for k in ("attempt", "lock_until", "pending", "lease_until",
                                               "processed_at", "sweeps")} if item else None,
        "t_end": t_end,
        "calls": calls,
        "forwards": [{k: r.get(k) for k in ("t0", "t1", "path", "idem", "decision", "answered")}
                     for r in recs],
        "resent_by_sweeper": swept.get(ev.key, 0),
        "in_dlq": dlq_keys.count(ev.key),
        "logs": grep_logs(log_dir, ev.key),
    }
    return doc


def explain(row) -> str:
    """One paragraph a person can read: what happened to this event."""
    ev = row["evidence"]
    lines = [f"- `{row['key']}` ({row['kind']}, {'accepted by ' + row['accepted_by'] if row['accepted'] else 'only errors'}): "
             + "; ".join(f"**{k}**: {why}" for k, why in row["problems"])]
    for a in ev["attempts"]:
        kill = f", killed {a['kill']['phase']} call {a['kill']['call']}" if a.get("kill") else ""
        lines.append(f"  - {a['what']} → {a['fn']} ({a['inst']}): {a['outcome']} {a['status']}{kill}")
    t_first = ev["calls"][0]["t"] if ev["calls"] else ev["t_end"]
    for c in ev["calls"]:
        bits = [f"+{c['t'] - t_first:7.3f}s", c["inst"], c["what"]]
        if c.get("fault"):
            bits.append(f"FAULT {c['fault']}{':' + c['sub'] if c.get('sub') else ''}")
        if c.get("kill"):
            bits.append(f"KILL {c['kill']}")
        if c.get("status") is not None:
            bits.append(f"→ {c['status']}{' ' + c['err'] if c.get('err') else ''}")
        if c.get("old_attempt") and c.get("attempt") and c["old_attempt"] == c["attempt"]:
            bits.append("(found its own attempt)")
        lines.append("    " + " ".join(bits))
    if ev["record"]:
        r = ev["record"]
        rel = {k: (f"{(r[k] / 1000 - ev['t_end']):+.1f}s vs end" if isinstance(r.get(k), int) and r[k] > 10**12 else r.get(k))
               for k in r}
        lines.append(f"  - record at the end: {rel}")
    lines.append(f"  - forwards: {len(ev['forwards'])} ({sum(f['decision'] == 'ok' for f in ev['forwards'])} answered 2xx); "
                 f"re-sent by the sweeper: {ev['resent_by_sweeper']}; in the DLQ: {ev['in_dlq']}")
    for l in ev["logs"][:12]:
        lines.append(f"    log {l}")
    return "\n".join(lines)
