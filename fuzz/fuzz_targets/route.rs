//! Request routing and parameter parsing: `wetoken_server::fuzz::request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wetoken_server::fuzz::request(data));
