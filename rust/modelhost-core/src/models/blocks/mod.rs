//! Building blocks that decoder architectures share, on candle tensors: weight matrices (`linear`, our
//! quantized kernels or candle's), token embeddings, RMS norm, RoPE, causal grouped-query attention, the
//! gated MLP and the KV cache. An architecture's file wires them together; a block that only one
//! architecture needs stays in that architecture's file until a second one needs it.

pub(crate) mod attention;
pub(crate) mod embeddings;
pub(crate) mod kv_cache;
pub(crate) mod linear;
pub(crate) mod mlp;
pub(crate) mod norm;
pub(crate) mod rope;
