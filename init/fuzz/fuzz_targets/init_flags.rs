#![no_main]
//! See `weft_init::fuzzing::init_flags` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_init::fuzzing::init_flags(data));
