#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sticky::fuzzing::control_message(data));
