//! `status-callback`: the Twilio Status webhook (see webhook_aws::run_webhook).

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    webhook_aws::run_webhook(webhook_aws::Endpoint::Status).await
}
