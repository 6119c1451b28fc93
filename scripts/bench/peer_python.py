#!/usr/bin/env python3
"""Peer benchmark: twilio-python RequestValidator.validate on the shared SMS fixture.

Usage: peer_python.py [SECONDS]   (default 3; each of the four measurements runs that long)

Prints one JSON line:
  valid_per_sec / invalid_per_sec: validate(url, params_dict, signature), the dict already parsed
      (what a Flask/Django app hands it).
  valid_with_body_parse_per_sec / invalid_with_body_parse_per_sec: parse the raw form body with
      urllib.parse.parse_qsl first, like for like with our Validator::verify, which takes the body.
"""

import json
import os
import sys
import time
from urllib.parse import parse_qsl, urlencode

import twilio
from twilio.request_validator import RequestValidator

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "sms-request.json")
BATCH = 200  # calls between clock reads


def rate(fn, seconds):
    """Calls of fn per second over about `seconds`, after a short warm-up."""
    warm_end = time.perf_counter() + min(0.2, seconds / 10)
    while time.perf_counter() < warm_end:
        fn()
    calls = 0
    start = time.perf_counter()
    end = start + seconds
    now = start
    while now < end:
        for _ in range(BATCH):
            fn()
        calls += BATCH
        now = time.perf_counter()
    return calls / (now - start)


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    with open(FIXTURE, encoding="utf-8") as f:
        fx = json.load(f)
    url, token = fx["url"], fx["auth_token"]
    valid, invalid = fx["valid_signature"], fx["invalid_signature"]
    params = dict(fx["params"])
    if len(params) != len(fx["params"]):
        sys.exit("fixture has repeated keys; a plain dict would lose values")
    body = urlencode([(k, v) for k, v in fx["params"]])

    validator = RequestValidator(token)

    def parse(raw):
        return dict(parse_qsl(raw, keep_blank_values=True, strict_parsing=True))

    # The measured calls must give the expected answers.
    if not (validator.validate(url, params, valid) and validator.validate(url, parse(body), valid)):
        sys.exit("twilio-python rejects the fixture's valid signature")
    if validator.validate(url, params, invalid) or validator.validate(url, parse(body), invalid):
        sys.exit("twilio-python accepts the fixture's invalid signature")

    result = {
        "peer": "twilio-python",
        "version": twilio.__version__,
        "runtime": "python " + sys.version.split()[0],
        "seconds": seconds,
        "valid_per_sec": rate(lambda: validator.validate(url, params, valid), seconds),
        "invalid_per_sec": rate(lambda: validator.validate(url, params, invalid), seconds),
        "valid_with_body_parse_per_sec": rate(
            lambda: validator.validate(url, parse(body), valid), seconds
        ),
        "invalid_with_body_parse_per_sec": rate(
            lambda: validator.validate(url, parse(body), invalid), seconds
        ),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
