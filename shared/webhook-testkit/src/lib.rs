//! Test kit, for tests, benchmarks, fuzzing and the CLI's sample tools only: never a
//! dependency of a Lambda function (`cargo tree -e normal -p sms-webhook` shows it is not).
//!
//! - [`contract`]: the store contract suite every `Store` adapter must pass;
//! - [`memory`]: in-memory store and queue adapters (with failure injection);
//! - [`samples`]: sample webhooks of every kind, signed requests;
//! - [`events`]: the signed API Gateway / Function URL / SQS events of `events/`;
//! - [`moto`]: the AWS emulator the moto-backed tests share.

#![warn(missing_docs)]

pub mod contract;
pub mod events;
pub mod memory;
pub mod moto;
pub mod samples;
