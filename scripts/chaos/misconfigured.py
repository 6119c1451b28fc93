#!/usr/bin/env python3
"""Trust issue, item 1, at the Lambda level: the real `sms-webhook` binary, under the Runtime
API emulator, with a Secrets Manager secret (moto) that cannot check signatures (`{"auth_token":
""}`, a placeholder, the public test token). Every request, signed with the empty key or the
test token, must get 500; the reason is logged once per execution environment, not per
request, and the environment stays warm. A good secret then accepts the same request.

    python3 scripts/chaos/misconfigured.py [--bin-dir target/debug]
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lambda_emulator import FunctionPool  # noqa: E402
from run import Moto  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TEST_TOKEN = "12345678901234567890123456789012"
GOOD_TOKEN = "0123456789abcdef0123456789abcdef"


def signed_event(token: str) -> bytes:
    """events/sms.http-api.json, signed with `token` (possibly empty) for its own URL."""
    with open(os.path.join(ROOT, "events", "sms.http-api.json")) as f:
        event = json.load(f)
    body = base64.b64decode(event["body"]).decode()
    params = sorted((k, v) for k, v in (p.split("=", 1) for p in body.split("&")))
    from urllib.parse import unquote_plus
    url = f"https://{event['headers']['host']}{event['rawPath']}"
    data = url + "".join(unquote_plus(k) + unquote_plus(v) for k, v in params)
    sig = base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()
    event["headers"]["x-twilio-signature"] = sig
    return json.dumps(event).encode()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "debug"))
    args = ap.parse_args()
    binary = os.path.join(args.bin_dir, "sms-webhook")
    work = tempfile.mkdtemp(prefix="misconfigured-")
    moto = Moto(work)
    failed = 0
    try:
        sm = moto.client("secretsmanager")
        base_env = {
            "PATH": os.environ.get("PATH", ""), "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_ENDPOINT_URL": moto.url, "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_LAMBDA_FUNCTION_NAME": "sms-webhook", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/sms",
            "EVENT_TABLE": "twilio-events", "WORK_QUEUE_URL": f"{moto.url}/123456789012/none",
        }
        cases = [
            ("empty token", '{"auth_token":""}', [""], 500),
            ("placeholder", "<your auth token>", ["<your auth token>"], 500),
            ("public test token", json.dumps({"auth_token": TEST_TOKEN}), [TEST_TOKEN], 500),
            # A good secret: the check passes, and the request reaches the store (absent
            # here), so it fails later, with 503: the configuration itself was accepted.
            ("good secret", json.dumps({"auth_token": GOOD_TOKEN}), [GOOD_TOKEN], 503),
        ]
        for n, (name, secret, tokens, expected) in enumerate(cases):
            arn = sm.create_secret(Name=f"case-{n}", SecretString=secret)["ARN"]
            env = dict(base_env, TWILIO_AUTH_TOKEN_SECRET_ARN=arn)
            log_dir = os.path.join(work, f"case-{n}")
            os.makedirs(log_dir)
            pool = FunctionPool("sms-webhook", binary, env, timeout_s=10, max_instances=1,
                                log_dir=log_dir, rng=random.Random(1))
            statuses = []
            try:
                for _ in range(3):
                    for token in tokens:
                        inv = pool.invoke(signed_event(token), allow_kill=False)
                        body = json.loads(inv.body or b"{}") if inv.outcome == "ok" else {}
                        statuses.append(body.get("statusCode", inv.outcome))
            finally:
                pool.close()
            logs = "".join(open(os.path.join(log_dir, f)).read() for f in os.listdir(log_dir))
            told = logs.count("misconfigured: every request gets 500")
            ok = (statuses == [expected] * len(statuses) and pool.cold_starts == 1
                  and told == (1 if expected == 500 else 0) and (not secret.strip("{}\" ") or secret not in logs))
            print(f"{'ok  ' if ok else 'FAIL'} {name}: statuses {statuses}, cold starts "
                  f"{pool.cold_starts}, reason logged {told}x")
            failed += not ok
    finally:
        moto.stop()
    print("misconfigured: all cases passed" if not failed else f"misconfigured: {failed} case(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
