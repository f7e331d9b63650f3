//! The Go MySQL DSN translation: `wetoken_registry::fuzz::dsn`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wetoken_registry::fuzz::dsn(data));
