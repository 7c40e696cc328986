#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sticky::fuzzing::config_file(data));
