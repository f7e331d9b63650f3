//! WeChat's message encryption and push XML: `wetoken_core::fuzz::msgcrypt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wetoken_core::fuzz::msgcrypt(data));
