//! `FORWARD_URL` against a real socket: redirects are failures (never an empty GET that
//! counts as delivered), and no error text carries the URL's query (it may hold a secret).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use twilio_webhook::FormParams;
use twilio_webhook::payload::Endpoint;
use webhook_forward::HttpForwarder;
use webhook_pipeline::Reply;
use webhook_pipeline::store::EventRecord;
use webhook_pipeline::worker::SlowWork;

fn event() -> EventRecord {
    EventRecord {
        key: "sms#SM1".into(),
        kind: "inbound_message".into(),
        endpoint: Endpoint::Sms,
        url: "https://h.example.com/sms".into(),
        params: FormParams::from_pairs([("MessageSid", "SM1"), ("Body", "hello")]),
        idempotency_token: None,
        received_at: 0,
        reply: Reply::text(200, ""),
        state_update: None,
        consent: None,
    }
}

/// A server answering every request with `answer`; returns its base URL and the request
/// lines it received (method and path).
async fn server(answer: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 64 * 1024];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            log.lock()
                .unwrap()
                .push(text.lines().next().unwrap_or_default().to_owned());
            let _ = sock.write_all(answer.as_bytes()).await;
        }
    });
    (base, seen)
}

#[tokio::test]
async fn a_redirect_is_a_failed_attempt_not_a_delivery() {
    // Where a followed 303 would send an empty GET (and answer 200).
    let (target, target_seen) =
        server("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
    for status in [
        "301 Moved Permanently",
        "302 Found",
        "303 See Other",
        "307 Temporary Redirect",
        "308 Permanent Redirect",
    ] {
        let answer: &'static str = Box::leak(
            format!(
                "HTTP/1.1 {status}\r\nlocation: {target}/moved?token=s3cret\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            .into_boxed_str(),
        );
        let (base, seen) = server(answer).await;
        let forwarder = HttpForwarder::new(format!("{base}/hook"));
        let err = forwarder.run(&event()).await.expect_err(status);
        let text = err.to_string();
        assert!(text.contains(&status[..3]), "{status}: {text}");
        assert!(
            text.contains(&format!("{target}/moved")),
            "names the Location: {text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
        // One POST, no retry of a redirect (it will not change), nothing followed.
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["POST /hook HTTP/1.1".to_owned()],
            "{status}"
        );
    }
    assert!(
        target_seen.lock().unwrap().is_empty(),
        "a redirect was followed"
    );
}

#[tokio::test]
async fn a_secret_in_the_forward_url_never_reaches_an_error() {
    // Nothing listens on this port: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let forwarder = HttpForwarder::new(format!(
        "http://user:pa55word@127.0.0.1:{port}/hook?api_key=s3cret-key&x=1"
    ));
    let text = forwarder
        .run(&event())
        .await
        .expect_err("refused")
        .to_string();
    assert!(text.contains("connection failed"), "{text}");
    for secret in ["s3cret-key", "api_key", "pa55word", "user:"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    // And the 5xx path.
    let (base, _) = server(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    let text = HttpForwarder::new(format!("{base}/hook?api_key=s3cret-key"))
        .run(&event())
        .await
        .expect_err("500")
        .to_string();
    assert!(
        text.contains("500") && !text.contains("s3cret-key"),
        "{text}"
    );
}
