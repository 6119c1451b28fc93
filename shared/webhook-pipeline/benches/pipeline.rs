//! The whole pipeline in-process with the in-memory store: parse → verify → payload → dedup
//! decision → reply, for a new inbound SMS and for a duplicate. Also counts heap allocations
//! per request (printed once before the timings).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use twilio_webhook::payload::Endpoint;
use twilio_webhook::{AuthToken, Validator};
use webhook_pipeline::{IncomingRequest, Pipeline, ReplyPolicy, Settings};
use webhook_testkit::memory::{MemoryQueue, MemoryStore};
use webhook_testkit::samples::{TEST_AUTH_TOKEN, inbound_sms, signed_request};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const URL: &str = "https://abc123.execute-api.us-east-1.amazonaws.com/sms";

fn pipeline() -> Pipeline {
    Pipeline::new(
        Validator::new(AuthToken::new(TEST_AUTH_TOKEN).unwrap()),
        std::sync::Arc::new(webhook_pipeline::ClaimThenSend::new(
            Arc::new(MemoryStore::default()),
            Arc::new(MemoryQueue::default()),
        )),
        ReplyPolicy {
            sms_auto_reply: Some("Thanks, we got your message.".into()),
            ..Default::default()
        },
        Settings::default(),
    )
}

fn requests(n: usize) -> Vec<IncomingRequest> {
    (0..n)
        .map(|i| {
            signed_request(
                TEST_AUTH_TOKEN,
                URL,
                &inbound_sms(&format!("SM{i:032x}"), "Hello there! Is this thing on?"),
            )
        })
        .collect()
}

fn allocations_per_request(rt: &tokio::runtime::Runtime) {
    let p = pipeline();
    let reqs = requests(1000);
    let before = ALLOCS.load(Ordering::Relaxed);
    rt.block_on(async {
        for r in &reqs {
            assert_eq!(p.handle(Endpoint::Sms, r).await.status, 200);
        }
    });
    let new = (ALLOCS.load(Ordering::Relaxed) - before) as f64 / reqs.len() as f64;
    let before = ALLOCS.load(Ordering::Relaxed);
    rt.block_on(async {
        for r in &reqs {
            p.handle(Endpoint::Sms, r).await;
        }
    });
    let dup = (ALLOCS.load(Ordering::Relaxed) - before) as f64 / reqs.len() as f64;
    println!("allocations per request: new event {new:.1}, duplicate {dup:.1}");
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    allocations_per_request(&rt);
    let mut g = c.benchmark_group("pipeline");
    g.bench_function("new_event", |b| {
        let p = pipeline();
        let reqs = requests(200_000);
        let mut i = 0;
        b.iter(|| {
            // Unique Sids so each request is a new event (wraps after 200k, then duplicates).
            let r = &reqs[i % reqs.len()];
            i += 1;
            rt.block_on(p.handle(Endpoint::Sms, r))
        })
    });
    g.bench_function("duplicate", |b| {
        let p = pipeline();
        let r = &requests(1)[0];
        rt.block_on(p.handle(Endpoint::Sms, r));
        b.iter(|| rt.block_on(p.handle(Endpoint::Sms, r)))
    });
    g.bench_function("accept_only", |b| {
        let p = pipeline();
        let r = &requests(1)[0];
        b.iter(|| p.accept(Endpoint::Sms, r).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
