#![no_main]
//! See `weft_controller::fuzzing::registration` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_controller::fuzzing::registration(data));
