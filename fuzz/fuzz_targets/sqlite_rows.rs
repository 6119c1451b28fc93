#![no_main]
// Body and properties: fuzz/bodies/src/sqlite_rows.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::sqlite_rows::run(data));
