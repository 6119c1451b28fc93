"""The `FORWARD_URL` receiver: records every POST (Idempotency-Key header, body, which worker
environment sent it) and answers 2xx, 500, or only after stalling past the forwarder's 5 s
timeout. Each worker environment gets its own path (`/fwd/<instance>`), so two environments
forwarding one event at the same moment can be told apart from one forwarder's retries."""
import json
import random
import threading
import time

from lambda_emulator import QuietServer, read_body
import http.server


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        srv: Receiver = self.server
        t0 = time.time()
        body = read_body(self)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        with srv.lock:
            x = srv.rng.random()
        if x < srv.fail_rate:
            decision, status, delay = "fail", 500, 0.0
        elif x < srv.fail_rate + srv.stall_rate:
            decision, status, delay = "stall", 200, srv.stall_s
        else:
            decision, status, delay = "ok", 200, 0.0
        rec = {"t0": t0, "path": self.path, "idem": self.headers.get("Idempotency-Key"),
               "key": doc.get("key"), "token": doc.get("idempotency_token"),
               "received_at": doc.get("received_at"), "decision": decision, "status": status,
               "body": body.decode("utf-8", "replace")}
        with srv.lock:
            srv.log.append(rec)
        if delay:
            time.sleep(delay)
        try:
            out = b'{"ok":true}' if status < 300 else b'{"error":"injected"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            rec["answered"] = True
        except OSError:
            rec["answered"] = False
        rec["t1"] = time.time()


class Receiver(QuietServer):
    def __init__(self, seed, fail_rate=0.05, stall_rate=0.02, stall_s=6.0):
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.rng = random.Random(f"{seed}:receiver")
        self.fail_rate = fail_rate
        self.stall_rate = stall_rate
        self.stall_s = stall_s
        self.lock = threading.Lock()
        self.log = []
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                         daemon=True, name="receiver").start()

    def url(self, instance_name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/fwd/{instance_name.replace('#', '-')}"
