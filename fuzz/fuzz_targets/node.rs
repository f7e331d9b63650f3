//! Registry node paths and database nodes: `wetoken_registry::fuzz::node`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wetoken_registry::fuzz::node(data));
