#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xmpp_mls::fuzz::vault_record(data));
