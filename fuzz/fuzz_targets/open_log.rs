//! Fuzz target `open_log`: see `skald_tests::open_log` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skald_tests::open_log(data);
});
