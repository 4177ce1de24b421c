//! Decoding: generating sequences from a trained decoder, the whole loop in Rust.
//!
//! - [`weights`]: the decoder's parameters, shared with the model (no copies).
//! - [`decoder`]: one step of the decoder with a key/value cache; cross-attention keys and
//!   values computed once per source ([`Memory`]).
//! - [`search`]: greedy, sampling and beam search over the steps ([`Search`]).

pub mod decoder;
pub mod llama;
pub mod search;
#[cfg(test)]
mod tests;
pub mod weights;

pub use decoder::{Decoder, Memory};
pub use llama::LlamaParts;
pub use search::{Hypothesis, Search, SearchConfig};
pub use weights::{DecoderWeights, Layer, Linear, Norm, NormKind, SelfAttention, Weight, Window};
