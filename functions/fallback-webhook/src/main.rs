//! `fallback-webhook`: the Twilio Fallback webhook (see webhook_aws::run_webhook).

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    webhook_aws::run_webhook(webhook_aws::Endpoint::Fallback).await
}
