//! `event-worker`: SQS jobs (partial batch failures) and the scheduled sweep.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    webhook_aws::run_worker(webhook_forward::HttpForwarder::slow_work).await
}
