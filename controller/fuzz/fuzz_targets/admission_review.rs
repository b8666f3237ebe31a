#![no_main]
//! See `weft_controller::fuzzing::admission_review` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_controller::fuzzing::admission_review(data));
