//! Manifest parsing: any file text, no panic (see `switchyard_control::fuzzing::manifest`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_control::fuzzing::manifest(data));
