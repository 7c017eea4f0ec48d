//! Fuzz target `event`: see `skald_tests::event` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skald_tests::event(data);
});
