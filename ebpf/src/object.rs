//! The program object built by `build.rs` and embedded in the binary.

/// The object's bytes; empty when it was built without the eBPF toolchain.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/weft-ebpf.o"));

/// Why the object is missing (empty when it is there).
const MISSING: &str = env!("WEFT_EBPF_MISSING");

/// The embedded object, or why this build has none.
pub fn object() -> Result<&'static [u8], crate::Error> {
    if OBJECT.is_empty() {
        Err(crate::Error::NotBuilt {
            reason: if MISSING.is_empty() {
                "the object is empty".to_string()
            } else {
                MISSING.to_string()
            },
        })
    } else {
        Ok(OBJECT)
    }
}

/// Whether this build embeds the programs.
pub fn is_embedded() -> bool {
    !OBJECT.is_empty()
}
