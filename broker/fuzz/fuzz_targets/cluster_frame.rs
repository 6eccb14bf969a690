//! Fuzz target: the cluster frame decoder gives the same frames and the same error whether
//! the input arrives whole or in arbitrary chunks, and every frame it decodes re-encodes to
//! exactly the bytes it came from (see `duomq_broker_fuzz::check_cluster`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| duomq_broker_fuzz::check_cluster(data));
