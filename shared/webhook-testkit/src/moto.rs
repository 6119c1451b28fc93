//! One moto server (the AWS emulator: DynamoDB, SQS, Secrets Manager, EventBridge...) per test
//! process, on a free loopback port, or the one `MOTO_ENDPOINT` names. moto exits when the
//! test process does: it reads its stdin until end of file. Python comes from `PYTHON`
//! (`scripts/test` points it at its venv), else `python3`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// moto checks a write's condition and then writes, with other request threads free to run in
/// between: two concurrent conditional writes could both pass, where DynamoDB applies one.
/// So the server answers one call at a time (the chaos harness does the same), and a test of
/// concurrent claims tests the code, not moto. No test long-polls SQS for more than 1 s.
const MOTO: &str = r#"
import sys, threading
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()
def one_at_a_time(environ, start_response):
    with lock:
        return list(app(environ, start_response))
server = make_server("127.0.0.1", int(sys.argv[1]), one_at_a_time, threaded=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
server.shutdown()
"#;

/// The server's endpoint URL (`http://127.0.0.1:PORT`), started on first use.
pub fn endpoint() -> &'static str {
    static SERVER: OnceLock<(String, Option<Mutex<Child>>)> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            if let Ok(endpoint) = std::env::var("MOTO_ENDPOINT") {
                return (endpoint, None);
            }
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
            let mut child = Command::new(python)
                .args(["-c", MOTO, &port.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3 with moto[server] installed (pip install 'moto[server]')");
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("piped stdout"))
                .read_line(&mut line)
                .expect("moto's first line");
            assert_eq!(
                line.trim(),
                "ready",
                "moto did not start (pip install 'moto[server]')"
            );
            (format!("http://127.0.0.1:{port}"), Some(Mutex::new(child)))
        })
        .0
}
