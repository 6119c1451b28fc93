//! The worker's configuration: `EVENT_BUS_NAME` adds the EventBridge step after `FORWARD_URL`,
//! and each record's time budget grows by PutEvents' worst case. Its own test binary: it
//! changes the process environment.

use std::time::Duration;

use webhook_aws::WorkerApp;
use webhook_aws::eventbridge::PUT_EVENTS_WORST_CASE_SECS;
use webhook_pipeline::forward::FORWARD_WORST_CASE_SECS;
use webhook_pipeline::worker::STORE_ALLOWANCE;

#[tokio::test]
async fn event_bus_name_adds_put_events_to_each_record() {
    // SAFETY: the only test of this binary; nothing else reads the environment meanwhile.
    unsafe {
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::set_var("EVENT_TABLE", "events");
        std::env::set_var("WORK_QUEUE_URL", "http://127.0.0.1:9/000000000000/work");
        std::env::set_var("FORWARD_URL", "");
        std::env::set_var("EVENT_BUS_NAME", "");
    }
    let sdk = webhook_aws::aws_config().await.unwrap();
    let budget = |app: WorkerApp| app.worker.record_budget();
    let put_events = Duration::from_secs(PUT_EVENTS_WORST_CASE_SECS);
    let forward = Duration::from_secs(FORWARD_WORST_CASE_SECS);

    // Empty = off.
    let app = WorkerApp::from_env(&sdk, webhook_forward::HttpForwarder::slow_work)
        .await
        .unwrap();
    assert!(!app.worker.has_slow_work());
    assert_eq!(budget(app), STORE_ALLOWANCE);

    unsafe { std::env::set_var("EVENT_BUS_NAME", "twilio-events") };
    let app = WorkerApp::from_env(&sdk, webhook_forward::HttpForwarder::slow_work)
        .await
        .unwrap();
    assert_eq!(budget(app), STORE_ALLOWANCE + put_events);

    unsafe { std::env::set_var("FORWARD_URL", "https://receiver.example.com/events") };
    let b = budget(
        WorkerApp::from_env(&sdk, webhook_forward::HttpForwarder::slow_work)
            .await
            .unwrap(),
    );
    assert!(
        b > STORE_ALLOWANCE + put_events + forward - Duration::from_secs(1),
        "{b:?}"
    );
    assert!(b <= STORE_ALLOWANCE + put_events + forward, "{b:?}");

    // Queue first has no lease for slow work: refused with either kind of slow work.
    unsafe { std::env::set_var("QUEUE_FIRST", "true") };
    for (forward_url, bus) in [
        ("https://receiver.example.com/events", ""),
        ("", "twilio-events"),
    ] {
        unsafe {
            std::env::set_var("FORWARD_URL", forward_url);
            std::env::set_var("EVENT_BUS_NAME", bus);
        }
        let err = WorkerApp::from_env(&sdk, webhook_forward::HttpForwarder::slow_work)
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("QUEUE_FIRST"), "{err}");
    }
    unsafe { std::env::set_var("EVENT_BUS_NAME", "") };
    let app = WorkerApp::from_env(&sdk, webhook_forward::HttpForwarder::slow_work)
        .await
        .unwrap();
    assert!(!app.worker.has_slow_work());
}
