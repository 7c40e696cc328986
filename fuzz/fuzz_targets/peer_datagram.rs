#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sticky_fuzz::peer_datagram(data));
