#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sticky::fuzzing::proxy_protocol(data));
