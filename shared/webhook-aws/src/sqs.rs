//! SQS work queue (standard queue: dedup is the event store's job, so FIFO's throughput
//! limits buy nothing).

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use webhook_pipeline::store::{Job, StoreError, WorkQueue};

pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }
}

#[async_trait]
impl WorkQueue for SqsQueue {
    async fn enqueue(&self, job: &Job) -> Result<(), StoreError> {
        let body = serde_json::to_string(job).map_err(StoreError::new)?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| {
                StoreError(format!(
                    "SQS: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                ))
            })?;
        Ok(())
    }
}
