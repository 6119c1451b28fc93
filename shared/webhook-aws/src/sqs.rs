//! SQS work queue (standard queue: dedup is the event store's job, so FIFO's throughput
//! limits buy nothing).

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use webhook_pipeline::store::{Job, PortError, WorkQueue};

/// The SQS adapter of the work queue port.
pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    /// Sends to the queue at `url`.
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }
}

#[async_trait]
impl WorkQueue for SqsQueue {
    async fn enqueue(&self, job: &Job) -> Result<(), PortError> {
        let body = serde_json::to_string(job).map_err(PortError::permanent)?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| crate::sdk_error("SQS", e))?;
        Ok(())
    }
}
