//! The Service model over arbitrary changes: no panic, incremental equals from scratch, every
//! backend ready or serving (see `switchyard_control::fuzzing::model`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_control::fuzzing::model(data));
