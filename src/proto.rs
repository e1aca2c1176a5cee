//! The generated `toolgate.v1` types and client/server, their codec, and the descriptor set
//! that server reflection serves.

use std::marker::PhantomData;
use tonic::codec::BufferSettings;
use tonic_prost::{ProstDecoder, ProstEncoder};

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("toolgate.v1");
}

/// The encoded `FileDescriptorSet` of `proto/toolgate/v1`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/toolgate_descriptor.bin"));

/// The service's descriptors, decoded once: for the protobuf JSON mapping (the CLI's
/// `--output json`, webhook bodies).
pub fn descriptors() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptors")
    })
}

/// Initial buffer of each call's encoder and decoder; it grows for larger messages.
///
/// tonic's default is 8 KiB per call, which an open WatchConfig stream keeps for its whole
/// life. Our messages are mostly far smaller, so 1 KiB keeps ten thousand idle streams
/// cheap without costing large messages anything but a reallocation.
const BUFFER_BYTES: usize = 1024;
/// Bytes encoded before a stream yields to the runtime (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// tonic's prost codec with a small initial buffer; `build.rs` makes the generated
/// services use it.
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(ProstDecoder::new(BufferSettings::new(
            BUFFER_BYTES,
            YIELD_THRESHOLD,
        )))
    }
}

/// tonic's prost decoder, whose failures are the sender's: a message that is not valid
/// protobuf is INVALID_ARGUMENT (tonic answers INTERNAL, as if the server were at fault).
#[derive(Debug)]
pub struct Decoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<U>, tonic::Status> {
        self.0.decode(buf).map_err(|status| {
            if status.code() == tonic::Code::Internal {
                tonic::Status::invalid_argument(format!(
                    "the message is not valid protobuf for this method: {}",
                    status.message()
                ))
            } else {
                status
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use super::v1 as pb;
    use proptest::prelude::*;
    use prost::Message;

    /// Decodes `bytes` as `M`; a message that decodes encodes to bytes that decode to it
    /// again.
    fn decodes_or_refuses<M: Message + Default + PartialEq + std::fmt::Debug>(
        bytes: &[u8],
    ) -> Result<(), TestCaseError> {
        if let Ok(message) = M::decode(bytes) {
            let again = M::decode(message.encode_to_vec().as_slice()).expect("re-decodes");
            prop_assert_eq!(again, message);
        }
        Ok(())
    }

    proptest! {
        /// Fuzz target for the request decoders (issue "Hardening"): arbitrary bytes as
        /// every request message never panic, and what decodes round-trips.
        #[test]
        fn any_bytes_as_any_request_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            decodes_or_refuses::<pb::DecideRequest>(&bytes)?;
            decodes_or_refuses::<pb::SetPolicyRequest>(&bytes)?;
            decodes_or_refuses::<pb::ConnectIntegrationRequest>(&bytes)?;
            decodes_or_refuses::<pb::UpsertPeopleRequest>(&bytes)?;
            decodes_or_refuses::<pb::SubmitApprovalRequest>(&bytes)?;
            decodes_or_refuses::<pb::ListApprovalsRequest>(&bytes)?;
            decodes_or_refuses::<pb::GetApprovalRequest>(&bytes)?;
            decodes_or_refuses::<pb::ListToolsRequest>(&bytes)?;
            decodes_or_refuses::<pb::WatchConfigRequest>(&bytes)?;
            decodes_or_refuses::<pb::WatchApprovalsRequest>(&bytes)?;
        }
    }
}
