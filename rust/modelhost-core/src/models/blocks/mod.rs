//! Building blocks that decoder architectures share, on candle tensors: weight matrices (`linear`, our
//! quantized kernels or candle's), token embeddings, RMS norm, RoPE (both of ggml's layouts, frequency factors),
//! the query/key/value projection (separate or fused, with optional biases), self-attention (grouped-query,
//! optional Q/K norms, sliding window), the gated MLP (SwiGLU or GeGLU, separate or fused gate/up), the
//! pre-norm decoder layer that wires them, and the KV cache. An architecture's file chooses among them; a
//! block that only one architecture needs stays in that architecture's file until a second one needs it.

pub(crate) mod attention;
pub(crate) mod embeddings;
pub(crate) mod kv_cache;
pub(crate) mod layer;
pub(crate) mod linear;
pub(crate) mod mlp;
pub(crate) mod norm;
pub(crate) mod qkv;
pub(crate) mod rope;
