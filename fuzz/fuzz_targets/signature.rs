#![no_main]
// Body and properties: fuzz/bodies/src/signature.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::signature::run(data));
