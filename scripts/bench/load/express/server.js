// Peer for scripts/bench/load/run.sh: the usual Express setup for Twilio webhooks, body parser
// + twilio.webhook() signature validation, answering empty TwiML. No storage, no queue, no
// logging: the floor a Node webhook pays before doing anything with the event.
//
//   PORT=3101 TWILIO_AUTH_TOKEN=... node server.js
//
// The URL validated is fixed (SIGNED_URL, default http://127.0.0.1:$PORT/sms), the URL the load
// generator signs: twilio.webhook() would otherwise rebuild it from the Host header and
// req.protocol, which is the same here but would hide a mismatch.
"use strict";

const express = require("express");
const twilio = require("twilio");

const host = process.env.HOST || "127.0.0.1";
const port = Number(process.env.PORT || 3101);
const token = process.env.TWILIO_AUTH_TOKEN || "12345678901234567890123456789012";
const url = process.env.SIGNED_URL || `http://${host}:${port}/sms`;
const twiml = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>';

const app = express();
app.use(express.urlencoded({ extended: false }));
app.post("/sms", twilio.webhook(token, { url }), (req, res) => {
  res.type("text/xml").send(twiml);
});
app.get("/healthz", (req, res) => res.send("ok"));

const server = app.listen(port, host, () => {
  console.log(`express peer listening on http://${host}:${port} (validating ${url})`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
process.on("SIGINT", () => server.close(() => process.exit(0)));
