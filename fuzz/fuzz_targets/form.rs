#![no_main]
// Body and properties: fuzz/bodies/src/form.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::form::run(data));
