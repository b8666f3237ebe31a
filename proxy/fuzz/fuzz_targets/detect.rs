#![no_main]
//! See `weft_proxy::fuzzing::detect_chunks` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_proxy::fuzzing::detect_chunks(data));
