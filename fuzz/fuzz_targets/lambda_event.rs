#![no_main]
// Body and properties: fuzz/bodies/src/lambda_event.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::lambda_event::run(data));
