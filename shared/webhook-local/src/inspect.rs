//! `twilio-webhooks inspect`: everything in a data directory as JSON values (one per line).

use std::path::Path;

use rusqlite::Connection;
use serde_json::{Value, json};
use webhook_pipeline::EventRecord;
use webhook_pipeline::state::StateRecord;

use crate::db::{Database, DbError, OpenError};

/// Why [`inspect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The data directory cannot be opened (or holds no data).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Reading the snapshot failed.
    #[error("cannot read the local data: {0}")]
    Read(#[from] DbError),
}

/// Every event record, state record, queued job and dead job of a data directory, in one
/// consistent snapshot (safe while `serve` runs: a read transaction never waits for it).
pub fn inspect(data_dir: &Path) -> Result<Vec<Value>, InspectError> {
    let db = Database::open_existing_dir(data_dir)?;
    Ok(db.read_sync(snapshot)?)
}

/// Runs inside the database thread's read transaction.
fn snapshot(tx: &mut Connection) -> Result<Vec<Value>, DbError> {
    let mut out = Vec::new();

    let mut stmt = tx.prepare(
        "SELECT event, processed, processed_at_ms, lock_until_ms, lease_until_ms, sweeps,
                expires_at_s
         FROM events ORDER BY received_at, key",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, bool>(1)?,
            r.get::<_, Option<i64>>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, u32>(5)?,
            r.get::<_, i64>(6)?,
        ))
    })?;
    for row in rows {
        let (event, processed, processed_at, lock_until, lease_until, sweeps, expires_at_s) = row?;
        let event: EventRecord = serde_json::from_str(&event)?;
        let normalized = webhook_pipeline::forward::normalized(&event);
        out.push(json!({
            "type": "event",
            "key": event.key,
            "kind": event.kind,
            "endpoint": event.endpoint,
            "processed": processed,
            "processed_at": processed_at,
            "received_at": event.received_at,
            "url": event.url,
            "idempotency_token": event.idempotency_token,
            "params": normalized["params"],
            // In full: the stored form leaves out the usual status and content type.
            "reply": {
                "status": event.reply.status,
                "content_type": event.reply.content_type,
                "body": event.reply.body,
            },
            "lock_until": lock_until,
            "lease_until": lease_until,
            "sweeps": sweeps,
            "expires_at_s": expires_at_s,
        }));
    }
    drop(stmt);

    let mut stmt = tx.prepare("SELECT id, state, version, expires_at_s FROM states ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    for row in rows {
        let (id, state, version, expires_at_s) = row?;
        let state: StateRecord = serde_json::from_str(&state)?;
        out.push(json!({
            "type": "state",
            "id": id,
            "version": version,
            "expires_at_s": expires_at_s,
            "latest_status": state.latest_status,
            "error_code": state.error_code,
            "error_meaning": state.error_meaning,
            "timeline": state.timeline,
        }));
    }
    drop(stmt);

    let mut stmt = tx.prepare(
        "SELECT id, key, 'queued', receive_count, visible_at_ms, NULL FROM jobs WHERE done = 0
         UNION ALL
         SELECT id, key, 'dead', receive_count, died_at_ms, reason FROM dead_jobs
         ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<String>>(5)?,
        ))
    })?;
    for row in rows {
        let (id, key, status, receive_count, at, reason) = row?;
        let mut job = json!({
            "type": "job",
            "id": id,
            "key": key,
            "status": status,
            "receive_count": receive_count,
        });
        if status == "dead" {
            job["died_at"] = json!(at);
            job["reason"] = json!(reason);
        } else {
            job["visible_at"] = json!(at);
        }
        out.push(job);
    }
    drop(stmt);
    Ok(out)
}
