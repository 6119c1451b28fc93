//! Loopback load generator for `twilio-webhooks serve` (and the Express peer in
//! `scripts/bench/load/express`): signed inbound-SMS webhooks over N keep-alive HTTP/1.1
//! connections, closed loop (each connection sends its next request when the previous answer
//! arrived), for a fixed duration or a fixed number of requests.
//!
//! Every request is built and signed before the clock starts (`webhook_pipeline::samples::
//! inbound_sms` + `twilio_webhook::sign`), so the measured loop only sends bytes and reads
//! answers. A share of the requests (`--dup-ratio`, default 0.2) repeats an earlier request byte
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

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;
use twilio_webhook::signature::SIGNATURE_HEADER;
use twilio_webhook::{AuthToken, FormParams, sign};
use webhook_pipeline::samples::{TEST_AUTH_TOKEN, inbound_sms};

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
fn parse_target(url: &str) -> Result<(SocketAddr, String, Uri), String> {
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
    let uri: Uri = path.parse().map_err(|e| format!("{path}: {e}"))?;
    Ok((addr, authority.to_owned(), uri))
}

/// One distinct webhook (a Sid), signed.
struct Signed {
    sid: String,
    body: Bytes,
    signature: HeaderValue,
}

fn signed(token: &AuthToken, url: &str, sid: String, text: &str) -> Signed {
    let params = inbound_sms(&sid, text);
    let form = FormParams::from_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
    let signature = sign(token, url, &form);
    Signed {
        sid,
        body: Bytes::from(form.encode()),
        signature: HeaderValue::from_str(&signature).expect("base64 is a valid header value"),
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
    host: HeaderValue,
    path: Uri,
    uniques: Vec<Signed>,
    /// Request i sends `uniques[order[i]]`.
    order: Vec<u32>,
    next: AtomicUsize,
    exhausted: AtomicBool,
    deadline: Instant,
}

fn plan(args: &Args, deadline: Instant) -> Result<Plan, String> {
    let (addr, host, path) = parse_target(&args.url)?;
    let token = AuthToken::new(args.token.clone());
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
        host: HeaderValue::from_str(&host).map_err(|e| e.to_string())?,
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

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn request(plan: &Plan, s: &Signed, body: Bytes) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = plan.path.clone();
    let h = req.headers_mut();
    h.insert(HOST, plan.host.clone());
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    h.insert(SIGNATURE_HEADER, s.signature.clone());
    req
}

async fn send(sender: &mut Sender, req: Request<Full<Bytes>>) -> Result<StatusCode, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status();
    res.into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    Ok(status)
}

/// One connection: send the next planned request, wait for its answer, repeat. Reconnects
/// after an error (counted).
async fn connection(plan: Arc<Plan>) -> ConnStats {
    let mut st = ConnStats {
        latencies_us: Vec::with_capacity(plan.order.len() / 8),
        ..ConnStats::default()
    };
    'connect: while Instant::now() < plan.deadline {
        let mut sender = match connect(plan.addr).await {
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
            let req = request(&plan, s, s.body.clone());
            let t0 = Instant::now();
            match send(&mut sender, req).await {
                Ok(status) => {
                    let us = t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    st.latencies_us.push(us);
                    *st.statuses.entry(status.as_u16()).or_default() += 1;
                    if status == StatusCode::OK {
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
    let token = AuthToken::new(args.token.clone());
    let sid = format!("SM{:08x}{:024x}", args.sid_tag, u64::MAX);
    let valid = signed(&token, &args.url, sid.clone(), "load test check");
    let mut sender = connect(plan.addr).await?;
    let mut expect = async |what: &str, req: Request<Full<Bytes>>, want: &[u16]| {
        let got = send(&mut sender, req).await?;
        eprintln!("check: {what}: {got}");
        if want.contains(&got.as_u16()) {
            Ok(())
        } else {
            Err(format!("check failed: {what} got {got}, expected {want:?}"))
        }
    };
    let tampered = Bytes::from(
        String::from_utf8_lossy(&valid.body).replace("load+test+check", "load+test+CHECK"),
    );
    expect("tampered body", request(plan, &valid, tampered), &[403]).await?;
    let mut unsigned = request(plan, &valid, valid.body.clone());
    unsigned.headers_mut().remove(SIGNATURE_HEADER);
    expect("missing signature", unsigned, &[400, 403]).await?;
    expect(
        "valid signature",
        request(plan, &valid, valid.body.clone()),
        &[200],
    )
    .await?;
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
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
