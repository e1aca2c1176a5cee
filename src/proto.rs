//! The generated `toolgate.v1` types and client/server, and the descriptor set that server
//! reflection serves.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("toolgate.v1");
}

/// The encoded `FileDescriptorSet` of `proto/toolgate/v1`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/toolgate_descriptor.bin"));
