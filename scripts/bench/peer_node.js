#!/usr/bin/env node
// Peer benchmark: twilio-node validateRequest on the shared SMS fixture.
//
// Usage: node peer_node.js [SECONDS]   (default 3; each of the four measurements runs that long)
// Install first: npm ci --prefix scripts/bench   (or npm install)
//
// Prints one JSON line:
//   valid_per_sec / invalid_per_sec: validateRequest(authToken, signature, url, paramsObject), the
//       object already parsed (what express.urlencoded hands it).
//   valid_with_body_parse_per_sec / invalid_with_body_parse_per_sec: parse the raw form body with
//       querystring.parse first, like for like with our Validator::verify, which takes the body.
"use strict";

const fs = require("fs");
const path = require("path");
const querystring = require("querystring");
const twilio = require("twilio");

const FIXTURE = path.join(__dirname, "fixtures", "sms-request.json");
const BATCH = 1000; // calls between clock reads

function twilioVersion() {
  const pkg = path.join(path.dirname(require.resolve("twilio")), "..", "package.json");
  return JSON.parse(fs.readFileSync(pkg, "utf8")).version;
}

// Calls of fn per second over about `seconds`, after a warm-up long enough for the JIT.
function rate(fn, seconds) {
  let sink = 0;
  const warmEnd = process.hrtime.bigint() + BigInt(Math.round(Math.min(0.5, seconds / 5) * 1e9));
  while (process.hrtime.bigint() < warmEnd) {
    for (let i = 0; i < BATCH; i++) sink += fn() ? 1 : 0;
  }
  let calls = 0;
  const start = process.hrtime.bigint();
  const end = start + BigInt(Math.round(seconds * 1e9));
  let now = start;
  while (now < end) {
    for (let i = 0; i < BATCH; i++) sink += fn() ? 1 : 0;
    calls += BATCH;
    now = process.hrtime.bigint();
  }
  if (sink < 0) console.error(sink); // keep the results alive
  return calls / (Number(now - start) / 1e9);
}

function main() {
  const seconds = process.argv[2] ? Number(process.argv[2]) : 3;
  if (!(seconds > 0)) {
    console.error(`bad duration ${process.argv[2]}`);
    process.exit(2);
  }
  const fx = JSON.parse(fs.readFileSync(FIXTURE, "utf8"));
  const { url, auth_token: token, valid_signature: valid, invalid_signature: invalid } = fx;
  const params = Object.fromEntries(fx.params);
  if (Object.keys(params).length !== fx.params.length) {
    console.error("fixture has repeated keys; a plain object would lose values");
    process.exit(1);
  }
  const body = new URLSearchParams(fx.params).toString();

  const check = (sig, p) => twilio.validateRequest(token, sig, url, p);
  // The measured calls must give the expected answers.
  if (!check(valid, params) || !check(valid, querystring.parse(body))) {
    console.error("twilio-node rejects the fixture's valid signature");
    process.exit(1);
  }
  if (check(invalid, params) || check(invalid, querystring.parse(body))) {
    console.error("twilio-node accepts the fixture's invalid signature");
    process.exit(1);
  }

  const result = {
    peer: "twilio-node",
    version: twilioVersion(),
    runtime: `node ${process.versions.node}`,
    seconds,
    valid_per_sec: rate(() => check(valid, params), seconds),
    invalid_per_sec: rate(() => check(invalid, params), seconds),
    valid_with_body_parse_per_sec: rate(() => check(valid, querystring.parse(body)), seconds),
    invalid_with_body_parse_per_sec: rate(() => check(invalid, querystring.parse(body)), seconds),
  };
  console.log(JSON.stringify(result));
}

main();
