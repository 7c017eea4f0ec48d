//! Fuzz target `snapshot`: see `skald_tests::snapshot` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skald_tests::snapshot(data);
});
