#![no_main]
// Body and properties: fuzz/bodies/src/lambda_fields.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::lambda_fields::run(data));
