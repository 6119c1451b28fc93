//! Loopback load generator for `twilio-webhooks serve` (and the Express peer in
//! `scripts/bench/load/express`): signed inbound-SMS webhooks over N keep-alive HTTP/1.1
//! connections, closed loop (each connection sends its next request when the previous answer
//! arrived), for a fixed duration or a fixed number of requests.
//!
//! Every request is built and signed before the clock starts (`webhook_testkit::samples::
//! inbound_sms` + `twilio_webhook::sign`), so the measured loop only sends bytes and reads
//! answers. It speaks HTTP/1.1 over plain sockets (answers parsed with `httparse`, bodies by
//! `Content-Length`): the generator shares the cores with the server, and a hyper client cost
//! twice the CPU per request (16 µs, a third of the server's). A share of the requests (`--dup-ratio`, default 0.2) repeats an earlier request byte
//! for byte, as a Twilio retry does: same Sid, same body, same signature.
//!
//! Prints one JSON object on stdout: requests, rps, latency percentiles (ms, from send to the
//! last byte of the answer), errors, status counts, how many distinct Sids got a 200, and the
//! generator's own CPU time. `--sids-out FILE` writes those Sids, one per line, for checking
//! the server's store afterwards (`scripts/bench/load/run.sh`).
//!
//! ```sh
//! cargo run --release -p webhook-local --example loadgen -- \
//!     --url http://127.0.0.1:3000/sms --connections 32 --duration 10 --check
//! ```
//!
//! Loopback only: the target must be 127.0.0.0/8 or ::1 (it refuses anything else).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twilio_webhook::signature::SIGNATURE_HEADER;
use twilio_webhook::{AuthToken, FormParams, sign};
use webhook_testkit::samples::{TEST_AUTH_TOKEN, inbound_sms};

const USAGE: &str = "\
loadgen --url http://127.0.0.1:PORT/sms [options]
  --url URL          target; also the URL that is signed (loopback addresses only)
  --connections N    keep-alive connections, each one request at a time (default 32)
  --duration S       stop sending after S seconds (default 10)
  --requests N       at most N requests; all are pre-signed, so this bounds memory (default 400000)
  --dup-ratio F      share of requests that repeat an earlier one (default 0.2)
  --token T          auth token (default: the public test token)
  --sid-tag HEX      8 hex digits in every Sid of this run (default: from the clock)
  --sids-out FILE    write the distinct Sids that got a 200, one per line
  --threads N        generator runtime threads (default 1)
  --check            first check that a valid request gets 200, a bad signature 403 and none 400/403";

struct Args {
    url: String,
    connections: usize,
    duration: Duration,
    requests: usize,
    dup_ratio: f64,
    token: String,
    sid_tag: u32,
    sids_out: Option<String>,
    threads: usize,
    check: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: String::new(),
        connections: 32,
        duration: Duration::from_secs(10),
        requests: 400_000,
        dup_ratio: 0.2,
        token: TEST_AUTH_TOKEN.to_owned(),
        sid_tag: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u32),
        sids_out: None,
        threads: 1,
        check: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--check" {
            a.check = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {v}: {e}");
        match flag.as_str() {
            "--url" => a.url = v,
            "--connections" => a.connections = v.parse().map_err(|e| bad(&e))?,
            "--duration" => {
                a.duration = Duration::from_secs_f64(v.parse().map_err(|e| bad(&e))?);
            }
            "--requests" => a.requests = v.parse().map_err(|e| bad(&e))?,
            "--dup-ratio" => a.dup_ratio = v.parse().map_err(|e| bad(&e))?,
            "--token" => a.token = v,
            "--sid-tag" => a.sid_tag = u32::from_str_radix(&v, 16).map_err(|e| bad(&e))?,
            "--sids-out" => a.sids_out = Some(v),
            "--threads" => a.threads = v.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if a.url.is_empty() {
        return Err("--url is required".into());
    }
    if a.connections == 0 || a.requests == 0 || a.threads == 0 {
        return Err("--connections, --requests and --threads must be positive".into());
    }
    if !(0.0..1.0).contains(&a.dup_ratio) {
        return Err("--dup-ratio must be in [0, 1)".into());
    }
    Ok(a)
}

/// `http://host:port/path` → (socket address, Host header, path). Loopback only.
fn parse_target(url: &str) -> Result<(SocketAddr, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let addr: SocketAddr = authority
        .parse()
        .or_else(|_| format!("{authority}:80").parse())
        .map_err(|_| {
            format!("{authority}: give a numeric loopback address, e.g. 127.0.0.1:3000")
        })?;
    let loopback = match addr.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_loopback(),
    };
    if !loopback {
        return Err(format!(
            "{addr} is not a loopback address; this tool only loads loopback"
        ));
    }
    if path
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!("{path}: not a valid request path"));
    }
    Ok((addr, authority.to_owned(), path.to_owned()))
}

/// One distinct webhook (a Sid), signed.
struct Signed {
    sid: String,
    body: Vec<u8>,
    signature: String,
}

fn signed(token: &AuthToken, url: &str, sid: String, text: &str) -> Signed {
    let params = inbound_sms(&sid, text);
    let form = FormParams::from_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
    let signature = sign(token, url, &form);
    Signed {
        sid,
        body: form.encode().into_bytes(),
        signature,
    }
}

/// Deterministic xorshift64*: the same arguments give the same request sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Everything the connections share: the pre-signed requests and the send order.
struct Plan {
    addr: SocketAddr,
    host: String,
    path: String,
    uniques: Vec<Signed>,
    /// Request i sends `uniques[order[i]]`.
    order: Vec<u32>,
    next: AtomicUsize,
    exhausted: AtomicBool,
    deadline: Instant,
}

fn plan(args: &Args, deadline: Instant) -> Result<Plan, String> {
    let (addr, host, path) = parse_target(&args.url)?;
    let token = AuthToken::new(args.token.clone()).unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(args.sid_tag));
    let mut uniques: Vec<Signed> = Vec::with_capacity(args.requests);
    let mut order = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        if !uniques.is_empty() && rng.unit() < args.dup_ratio {
            order.push((rng.next() % uniques.len() as u64) as u32);
        } else {
            let n = uniques.len();
            let sid = format!("SM{:08x}{n:024x}", args.sid_tag);
            uniques.push(signed(
                &token,
                &args.url,
                sid,
                &format!("load test message {n}"),
            ));
            order.push(n as u32);
        }
    }
    Ok(Plan {
        addr,
        host,
        path,
        uniques,
        order,
        next: AtomicUsize::new(0),
        exhausted: AtomicBool::new(false),
        deadline,
    })
}

#[derive(Default)]
struct ConnStats {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    first_error: Option<String>,
    /// Indexes into `Plan::uniques` that got a 200.
    ok: Vec<u32>,
}

impl ConnStats {
    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: TcpStream,
    /// The request being written.
    out: Vec<u8>,
    /// What was read and not yet consumed.
    input: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Self, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Self {
            stream,
            out: Vec::with_capacity(2048),
            input: Vec::with_capacity(4096),
        })
    }

    /// POST `body` (signed with `signature`, or unsigned) and read the whole answer: its
    /// status.
    async fn send(
        &mut self,
        plan: &Plan,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<u16, String> {
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(plan.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(plan.host.as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: application/x-www-form-urlencoded\r\n");
        if let Some(sig) = signature {
            out.extend_from_slice(SIGNATURE_HEADER.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(sig.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        self.stream
            .write_all(out)
            .await
            .map_err(|e| format!("sending: {e}"))?;
        loop {
            if let Some((status, len)) = parse_answer(&self.input)? {
                self.input.drain(..len);
                return Ok(status);
            }
            let n = self
                .stream
                .read_buf(&mut self.input)
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
        }
    }
}

/// A whole answer at the start of `input`: `(status, its length in bytes)`; `None` while
/// more bytes are needed.
fn parse_answer(input: &[u8]) -> Result<Option<(u16, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let head = match res.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed answer: {e}")),
    };
    let mut body = None;
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
            body = Some(v.ok_or("malformed content-length")?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("answers without a content-length are not supported".into());
        }
    }
    let status = res.code.ok_or("answer without a status")?;
    let total = head + body.unwrap_or(0);
    Ok((input.len() >= total).then_some((status, total)))
}

/// One connection: send the next planned request, wait for its answer, repeat. Reconnects
/// after an error (counted).
async fn connection(plan: Arc<Plan>) -> ConnStats {
    let mut st = ConnStats {
        latencies_us: Vec::with_capacity(plan.order.len() / 8),
        ..ConnStats::default()
    };
    'connect: while Instant::now() < plan.deadline {
        let mut conn = match Conn::open(plan.addr).await {
            Ok(s) => s,
            Err(e) => {
                st.error(e);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        loop {
            if Instant::now() >= plan.deadline {
                break 'connect;
            }
            let i = plan.next.fetch_add(1, Ordering::Relaxed);
            let Some(&u) = plan.order.get(i) else {
                plan.exhausted.store(true, Ordering::Relaxed);
                break 'connect;
            };
            let s = &plan.uniques[u as usize];
            let t0 = Instant::now();
            match conn.send(&plan, Some(&s.signature), &s.body).await {
                Ok(status) => {
                    let us = t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    st.latencies_us.push(us);
                    *st.statuses.entry(status).or_default() += 1;
                    if status == 200 {
                        st.ok.push(u);
                    }
                }
                Err(e) => {
                    st.error(e);
                    continue 'connect;
                }
            }
        }
    }
    st
}

/// A valid request gets 200, a tampered body 403 and a missing signature 403 (twilio-node's
/// middleware answers 400 to that one; both are refusals).
async fn check(plan: &Plan, args: &Args) -> Result<String, String> {
    let token = AuthToken::new(args.token.clone()).unwrap();
    let sid = format!("SM{:08x}{:024x}", args.sid_tag, u64::MAX);
    let valid = signed(&token, &args.url, sid.clone(), "load test check");
    let mut conn = Conn::open(plan.addr).await?;
    let mut expect = async |what: &str, signature: Option<&str>, body: &[u8], want: &[u16]| {
        let got = conn.send(plan, signature, body).await?;
        eprintln!("check: {what}: {got}");
        if want.contains(&got) {
            Ok(())
        } else {
            Err(format!("check failed: {what} got {got}, expected {want:?}"))
        }
    };
    let tampered =
        String::from_utf8_lossy(&valid.body).replace("load+test+check", "load+test+CHECK");
    let sig = Some(valid.signature.as_str());
    expect("tampered body", sig, tampered.as_bytes(), &[403]).await?;
    expect("missing signature", None, &valid.body, &[400, 403]).await?;
    expect("valid signature", sig, &valid.body, &[200]).await?;
    Ok(sid)
}

/// This process's user + system CPU seconds (from /proc; USER_HZ is 100 on Linux).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after_comm.split(' ').collect();
    // Fields 14 and 15 of stat(5); after_comm starts at field 3.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    f64::from(sorted_us[rank.clamp(1, sorted_us.len()) - 1]) / 1000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    // One thread (the default): no work stealing between connections to pay for.
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let signing = Instant::now();
    // The deadline is set again once signing is done.
    let mut p = plan(&args, Instant::now())?;
    eprintln!(
        "loadgen: {} requests ({} distinct Sids) signed in {:.1} s",
        p.order.len(),
        p.uniques.len(),
        signing.elapsed().as_secs_f64()
    );
    let check_sid = if args.check {
        Some(check(&p, &args).await?)
    } else {
        None
    };

    let cpu0 = cpu_seconds();
    let start = Instant::now();
    p.deadline = start + args.duration;
    let plan = Arc::new(p);
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| tokio::spawn(connection(plan.clone())))
        .collect();
    let mut all = ConnStats::default();
    for t in tasks {
        let st = t.await.map_err(|e| format!("connection task: {e}"))?;
        all.latencies_us.extend(st.latencies_us);
        for (k, v) in st.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
        all.errors += st.errors;
        all.first_error = all.first_error.or(st.first_error);
        all.ok.extend(st.ok);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu0.zip(cpu_seconds()).map(|(a, b)| b - a);

    let sent = plan.next.load(Ordering::Relaxed).min(plan.order.len());
    let sent_uniques = plan.order[..sent]
        .iter()
        .copied()
        .max()
        .map_or(0, |m| m as usize + 1);
    let mut ok = all.ok;
    ok.sort_unstable();
    ok.dedup();
    let mut ok_sids: Vec<&str> = ok
        .iter()
        .map(|&u| plan.uniques[u as usize].sid.as_str())
        .collect();
    if let Some(sid) = &check_sid {
        ok_sids.push(sid);
    }
    if let Some(path) = &args.sids_out {
        let mut text = ok_sids.join("\n");
        text.push('\n');
        std::fs::write(path, text).map_err(|e| format!("{path}: {e}"))?;
    }

    let mut lat = all.latencies_us;
    lat.sort_unstable();
    let responses = lat.len();
    let mean_ms = if responses == 0 {
        0.0
    } else {
        lat.iter().map(|&x| f64::from(x)).sum::<f64>() / responses as f64 / 1000.0
    };
    let statuses: BTreeMap<String, u64> = all
        .statuses
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let out = json!({
        "url": args.url,
        "connections": args.connections,
        "threads": args.threads,
        "duration_s": round3(elapsed),
        "requests": responses,
        "rps": (responses as f64 / elapsed).round(),
        "p50_ms": percentile_ms(&lat, 50.0),
        "p90_ms": percentile_ms(&lat, 90.0),
        "p99_ms": percentile_ms(&lat, 99.0),
        "p999_ms": percentile_ms(&lat, 99.9),
        "max_ms": percentile_ms(&lat, 100.0),
        "mean_ms": round3(mean_ms),
        "errors": all.errors,
        "first_error": all.first_error,
        "status_counts": statuses,
        "unique_sids": ok_sids.len(),
        "unique_sids_sent": sent_uniques + usize::from(check_sid.is_some()),
        "duplicates_sent": sent - sent_uniques.min(sent),
        "exhausted": plan.exhausted.load(Ordering::Relaxed),
        "sid_tag": format!("{:08x}", args.sid_tag),
        "gen_cpu_s": cpu.map(round3),
        "gen_cpu_pct_of_one_core": cpu.map(|c| (c / elapsed * 1000.0).round() / 10.0),
    });
    println!("{out}");
    Ok(())
}
