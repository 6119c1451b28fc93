#![no_main]
// Body and properties: fuzz/bodies/src/stored_json.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::stored_json::run(data));
