#![no_main]
// Body and properties: fuzz/bodies/src/payload.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::payload::run(data));
