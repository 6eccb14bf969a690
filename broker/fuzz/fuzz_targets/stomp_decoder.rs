//! Fuzz target: the STOMP decoder gives the same frames and the same error whether the
//! input arrives whole or in arbitrary chunks, and every frame it decodes re-encodes to
//! bytes that decode to the same frame, in each STOMP version (see
//! `duomq_broker_fuzz::check_stomp`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| duomq_broker_fuzz::check_stomp(data));
