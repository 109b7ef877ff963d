//! Generated code for ferrolb's gRPC API. No hand-written logic lives here.

/// Package `ferrolb.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/ferrolb.v1.rs"));
}

/// The encoded descriptor set of every ferrolb .proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ferrolb_descriptor.bin"));
