//! The wire codec: prost's, except that each message's bytes are reserved at their exact
//! size and every message is handed to HTTP/2 as soon as it is encoded.
//!
//! A stream's encode buffer keeps, for the stream's life, the capacity it once grew to.
//! Grown by doubling while prost writes, and filled with several messages before it is
//! handed on (tonic's default), it held about twice the largest burst: ~76 KB in every
//! `Sync` stream with 32 KiB parts. Reserved exactly and handed on per message, it holds
//! one part ([`crate::parts::PART_BYTES`]), which is sized to fit [`BUFFER_BYTES`]: the
//! buffer then never grows past the capacity it starts with.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

/// Initial capacity of a call's buffers.
pub const BUFFER_BYTES: usize = 4 * 1024;

/// Initial capacity of a call's buffers, and the size past which encoded bytes are handed
/// on (1: every message at once).
const SETTINGS: (usize, usize) = (BUFFER_BYTES, 1);

/// Used by the generated client and server code (`codec_path` in `tests/generated.rs`).
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = LeanEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> LeanEncoder<T> {
        LeanEncoder(PhantomData)
    }

    fn decoder(&mut self) -> ProstDecoder<U> {
        ProstDecoder::new(BufferSettings::new(SETTINGS.0, SETTINGS.1))
    }
}

pub struct LeanEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for LeanEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding a message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(SETTINGS.0, SETTINGS.1)
    }
}
