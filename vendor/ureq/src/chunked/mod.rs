#![allow(dead_code, unused_imports)]
mod decoder;
pub(crate) use decoder::Buffered;
pub use decoder::Decoder;
