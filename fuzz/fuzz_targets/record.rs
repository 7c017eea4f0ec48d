//! Fuzz target `record`: see `skald_tests::record` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skald_tests::record(data);
});
