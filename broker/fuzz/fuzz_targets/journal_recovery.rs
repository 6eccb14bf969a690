//! Fuzz target: journal recovery over generated segment files either refuses, leaving
//! every segment file as it was, or succeeds, and then opening again recovers the same
//! (see `duomq_broker_fuzz::check_journal`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| duomq_broker_fuzz::check_journal(data));
