#![no_main]
// Body and properties: fuzz/bodies/src/twiml.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::twiml::run(data));
