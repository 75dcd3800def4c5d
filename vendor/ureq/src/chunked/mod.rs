#![allow(dead_code, unused_imports)]
mod decoder;
// modelmux: patch 5, the decoder's view of what the stream already buffered
pub(crate) use decoder::Buffered;
pub use decoder::Decoder;
