//! The on-call tools' AWS calls (`twilio-webhooks redrive`, `replay`), kept out of
//! `webhook-aws`: `scripts/check_template.py` grants the Lambda roles exactly the calls that
//! crate makes, and the functions never scan the table or read the DLQ. These run with the
//! operator's credentials.

#![warn(missing_docs)]

pub mod redrive;

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use webhook_aws::dynamo::{PENDING, PK, TTL_ATTRIBUTE, condition, event_of};
use webhook_pipeline::PortError;
use webhook_pipeline::lifecycle::{self, Params};
use webhook_pipeline::replay::{Candidate, ReplayFilter, ReplaySource};

type Item = HashMap<String, AttributeValue>;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The event table of a deployment, for `replay`.
pub struct DynamoReplay {
    client: Client,
    table: String,
}

impl DynamoReplay {
    /// The event table named `table`, read with `client`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

/// `twilio-webhooks replay` on the table. Event items hold their received time only inside
/// the event JSON, so listing them is a Scan of the whole table (event items only, projected
/// to what a replay reads); the filter is applied here.
#[async_trait]
impl ReplaySource for DynamoReplay {
    async fn candidates(
        &self,
        filter: &ReplayFilter,
        now_ms: i64,
    ) -> Result<(Vec<Candidate>, usize), PortError> {
        let now_s = now_ms.div_euclid(1000);
        let mut out = Vec::new();
        let mut unreadable = 0;
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("attribute_exists(#event) AND #expires > :now_s")
                .projection_expression("pk, #event, #pending")
                .expression_attribute_names("#event", "event")
                .expression_attribute_names("#expires", TTL_ATTRIBUTE)
                .expression_attribute_names("#pending", PENDING)
                .expression_attribute_values(":now_s", n(now_s))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| webhook_aws::sdk_error("DynamoDB", e))?;
            for item in page.items() {
                match event_of(item) {
                    Ok(event) if filter.matches(&event) => out.push(Candidate {
                        event,
                        processed: !item.contains_key(PENDING),
                    }),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(key = item.get(PK).and_then(|v| v.as_s().ok()).map_or("", String::as_str), error = %e, "replay: unreadable event record");
                        unreadable += 1;
                    }
                }
            }
            match page.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => break,
            }
        }
        out.sort_by_key(|c| c.event.received_at);
        Ok((out, unreadable))
    }

    async fn reopen(&self, key: &str, now_ms: i64, lock_until_ms: i64) -> Result<bool, PortError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(key))
            .update_expression(
                "SET pending = :one, lock_until = :lock, sweeps = :zero \
                 REMOVE processed_at, lease_until, lease_owner",
            )
            .expression_attribute_values(":one", s("1"))
            .expression_attribute_values(":lock", n(lock_until_ms))
            .expression_attribute_values(":zero", n(0));
        let p = Params {
            now_ms,
            ..Params::default()
        };
        let (expression, values) = condition(lifecycle::REOPEN, &p);
        let mut r = r.condition_expression(expression);
        for (name, value) in values {
            r = r.expression_attribute_values(name, value);
        }
        let r = r.send().await;
        match r {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
            {
                Ok(false)
            }
            Err(e) => Err(webhook_aws::sdk_error("DynamoDB", e)),
        }
    }
}
