//! Test support shared by the CLI's integration tests.
pub mod fake_twilio;
