//! Generated code for ferrolb's gRPC API. No hand-written logic lives here.

/// Package `ferrolb.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("ferrolb.v1");
}

/// The encoded descriptor set of every ferrolb .proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ferrolb_descriptor.bin"));
