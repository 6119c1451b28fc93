//! `twilio-webhooks redrive`: move dead-lettered jobs back to the work queue with
//! ReceiveMessage, SendMessage and DeleteMessage (moto has no message-move task, and this
//! works the same against both).
//!
//! Each message is deleted from the DLQ only after its copy was sent. The copy keeps the body
//! and the message attributes, and on a FIFO queue the group id and deduplication id. If a
//! delete fails after the send, the job is in both queues: the worker's lease and processed
//! mark make the second delivery a no-op.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};

/// A redrive step that failed for the whole run.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// An SQS call failed.
    #[error("SQS {call} on {queue}: {message}")]
    Sqs {
        /// The SQS API action, e.g. `ReceiveMessage`.
        call: &'static str,
        /// The URL of the queue it was made on.
        queue: String,
        /// The SDK error with its cause chain.
        message: String,
    },
}

fn sqs_error(call: &'static str, queue: &str, e: impl std::error::Error) -> RedriveError {
    RedriveError::Sqs {
        call,
        queue: queue.to_owned(),
        message: context(e),
    }
}

/// An SDK error with its cause chain (its top-level message alone is "service error").
fn context(e: impl std::error::Error) -> String {
    aws_sdk_sqs::error::DisplayErrorContext(e).to_string()
}

/// What a redrive did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RedriveReport {
    /// Sent to the work queue and deleted from the DLQ.
    pub moved: usize,
    /// Sent, but the delete failed: also still in the DLQ (harmless, see the module doc).
    pub copied_not_deleted: usize,
    /// Not sent: they stay in the DLQ (visible again after the receive's visibility timeout).
    pub failed: usize,
}

/// Messages in the DLQ: `(visible, in flight)`, SQS's approximate counts. What `--dry-run`
/// reports: counting by receiving would hide the messages for a visibility timeout.
pub async fn depth(sqs: &Client, dlq: &str) -> Result<(u64, u64), RedriveError> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(dlq)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|e| sqs_error("GetQueueAttributes", dlq, e))?;
    let get = |name: QueueAttributeName| {
        out.attributes()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    ))
}

/// How long a received message stays hidden in the DLQ while it is copied; a message whose
/// send failed comes back after it.
const VISIBILITY: Duration = Duration::from_secs(60);

/// Move every message of `dlq` to `queue` (at most `max`), until a receive finds none.
/// `progress` gets the number handled so far after each message.
pub async fn redrive(
    sqs: &Client,
    dlq: &str,
    queue: &str,
    max: Option<usize>,
    progress: &mut (dyn FnMut(usize) + Send),
) -> Result<RedriveReport, RedriveError> {
    let fifo = queue.ends_with(".fifo");
    let mut report = RedriveReport::default();
    let mut handled = 0usize;
    loop {
        let want = max.map_or(10, |m| m.saturating_sub(handled).min(10));
        if want == 0 {
            break;
        }
        let received = sqs
            .receive_message()
            .queue_url(dlq)
            .max_number_of_messages(want as i32)
            // Long polling asks every SQS server, so an empty answer means an empty queue.
            .wait_time_seconds(1)
            .visibility_timeout(VISIBILITY.as_secs() as i32)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| sqs_error("ReceiveMessage", dlq, e))?;
        let messages = received.messages();
        if messages.is_empty() {
            break;
        }
        for m in messages {
            handled += 1;
            match send_copy(sqs, queue, fifo, m).await {
                Ok(()) => {
                    let deleted = match m.receipt_handle() {
                        Some(handle) => sqs
                            .delete_message()
                            .queue_url(dlq)
                            .receipt_handle(handle)
                            .send()
                            .await
                            .map(|_| ())
                            .map_err(context),
                        None => Err("no receipt handle".to_owned()),
                    };
                    match deleted {
                        Ok(()) => report.moved += 1,
                        Err(e) => {
                            tracing::error!(message_id = m.message_id().unwrap_or(""), error = %e,
                                "sent to the work queue but not deleted from the DLQ");
                            report.copied_not_deleted += 1;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(message_id = m.message_id().unwrap_or(""), error = %e,
                        "could not send to the work queue; it stays in the DLQ");
                    report.failed += 1;
                }
            }
            progress(handled);
        }
    }
    Ok(report)
}

async fn send_copy(sqs: &Client, queue: &str, fifo: bool, m: &Message) -> Result<(), String> {
    let system: HashMap<_, _> = m.attributes().cloned().unwrap_or_default();
    let mut send = sqs
        .send_message()
        .queue_url(queue)
        .message_body(m.body().unwrap_or_default())
        .set_message_attributes(m.message_attributes().cloned().filter(|a| !a.is_empty()));
    if fifo {
        let group = system
            .get(&MessageSystemAttributeName::MessageGroupId)
            .ok_or("a FIFO queue needs the message's group id, and the DLQ message has none")?;
        send = send.message_group_id(group).set_message_deduplication_id(
            system
                .get(&MessageSystemAttributeName::MessageDeduplicationId)
                .cloned(),
        );
    }
    send.send().await.map_err(context)?;
    Ok(())
}
