//! The decoder the supported architectures share: token embeddings (optionally scaled), a stack of pre-norm
//! `DecoderLayer`s, the output norm and head (optionally soft-capped). An architecture's file reads its keys and
//! says, per layer, which variant of the shared blocks it uses (`LayerSpec`) and how it rotates (`RopeSetup`);
//! loading and the forward pass are here, once.

use candle_core::{Device, Tensor};

use super::blocks::attention::{add_bias, Heads, Scaling, SelfAttention};
use super::blocks::embeddings::TokenEmbeddings;
use super::blocks::kv_cache::KvCache;
use super::blocks::layer::DecoderLayer;
use super::blocks::linear::Linear;
use super::blocks::mlp::{Activation, GatedMlp};
use super::blocks::norm::RmsNorm;
use super::blocks::qkv::QkvProjection;
use super::blocks::rope::{Rope, RopeConfig, RopeTables};
use super::gguf_loader::GgufLoader;
use super::params::LlmParams;
use super::Decoder;
use crate::error::Result;
use crate::host::placement::Placement;

/// Which variant of the shared blocks one layer uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerSpec {
    /// Per-head RMS norms of queries and keys (`attn_q_norm`, `attn_k_norm`).
    pub(crate) qk_norm: bool,
    /// Norms of the attention and feed-forward outputs (`post_attention_norm`, `post_ffw_norm`).
    pub(crate) post_norms: bool,
    /// `ffn_up` holds the gate and up projections (no `ffn_gate`).
    pub(crate) fused_gate_up: bool,
    pub(crate) activation: Activation,
    pub(crate) scaling: Scaling,
    /// A sliding attention window; such layers also use `RopeSetup::sliding` where there is one.
    pub(crate) sliding_window: Option<usize>,
}

/// How an architecture rotates queries and keys, from which each instance builds its tables.
#[derive(Debug, Clone)]
pub(crate) struct RopeSetup {
    /// Full-attention layers. Its base and scale are replaced by the instance's (the load config's
    /// `ropeFrequencyBase`/`ropeFrequencyScale`, else the file's).
    pub(crate) full: RopeConfig,
    /// Long-context factors used instead of `full.factors` when the instance's context is longer than
    /// `original_context` (Phi-3's `rope_factors_long`, as llama.cpp's `get_rope_factors` chooses).
    pub(crate) long_factors: Option<Vec<f32>>,
    pub(crate) original_context: usize,
    /// Sliding-window layers, where they rotate with settings of their own (Gemma 3's local base).
    pub(crate) sliding: Option<RopeConfig>,
}

impl RopeSetup {
    /// An instance's tables for `ctx` positions, with base `base` and scale `scale` on the full-attention layers.
    pub(crate) fn tables(&self, ctx: usize, base: f64, scale: f64) -> Result<RopeTables> {
        let mut full = RopeConfig { base, scale, ..self.full.clone() };
        if let Some(long) = self.long_factors.as_ref().filter(|_| ctx > self.original_context) {
            full.factors = Some(long.clone());
        }
        let sliding = self.sliding.as_ref().map(|c| Rope::new(c, ctx)).transpose()?;
        Ok(RopeTables { full: Rope::new(&full, ctx)?, sliding })
    }
}

/// What an architecture tells the shared loader.
pub(crate) struct DecoderSpec<'s> {
    /// Multiplies the token embeddings (Gemma: √n_embd).
    pub(crate) embedding_scale: Option<f32>,
    /// `c·tanh(logits/c)` on the output (`final_logit_softcapping`).
    pub(crate) final_softcap: Option<f32>,
    /// The variant of each layer, by index.
    pub(crate) layer: &'s dyn Fn(usize) -> LayerSpec,
    pub(crate) rope: RopeSetup,
}

/// A loaded decoder of any of the shared-block architectures.
pub(crate) struct Transformer {
    n_embd: usize,
    embeddings: TokenEmbeddings,
    embedding_scale: Option<f32>,
    layers: Vec<DecoderLayer>,
    output_norm: RmsNorm,
    output: Linear,
    /// Qwen 2's optional `output.bias`.
    output_bias: Option<Tensor>,
    output_device: Device,
    final_softcap: Option<f32>,
    rope: RopeSetup,
}

impl Transformer {
    /// Load every tensor, layer `i` on `placement`'s device for it, as `spec` describes the layers. Fails on any
    /// tensor of the file left unread.
    pub(crate) fn load(
        ld: &mut GgufLoader<'_, '_, '_>,
        p: &LlmParams,
        placement: &Placement,
        spec: DecoderSpec<'_>,
        architecture: &str,
    ) -> Result<Self> {
        let e = p.n_embd;
        let heads = Heads { n_head: p.n_head, n_kv: p.n_head_kv, head_dim: p.head_dim };
        // Ids are checked against the vocabulary before every lookup (`LlmModel::check_ids`).
        let table = ld.linear("token_embd.weight", &[e, p.vocab], &Device::Cpu)?;

        let mut layers = Vec::with_capacity(p.n_layer);
        for i in 0..p.n_layer {
            let dev = placement.block_device(i)?;
            let ls = (spec.layer)(i);
            let name = |s: &str| format!("blk.{i}.{s}.weight");
            let norm = |ld: &mut GgufLoader<'_, '_, '_>, s: &str, len: usize| -> Result<RmsNorm> {
                Ok(RmsNorm::new(ld.vector(&name(s), len, &dev)?, p.rms_eps))
            };
            let qkv = QkvProjection::load(ld, i, e, p.n_head * p.head_dim, p.n_head_kv * p.head_dim, &dev)?;
            let attention = SelfAttention {
                qkv,
                q_norm: if ls.qk_norm { Some(norm(ld, "attn_q_norm", p.head_dim)?) } else { None },
                k_norm: if ls.qk_norm { Some(norm(ld, "attn_k_norm", p.head_dim)?) } else { None },
                output: ld.linear(&name("attn_output"), &[p.n_head * p.head_dim, e], &dev)?,
                output_bias: ld.optional_vector(&format!("blk.{i}.attn_output.bias"), e, &dev)?,
                heads,
                scaling: ls.scaling,
                sliding_window: ls.sliding_window,
            };
            let mlp = if ls.fused_gate_up {
                GatedMlp::load_fused(ld, i, e, ls.activation, &dev)?
            } else {
                GatedMlp::load(ld, i, e, ls.activation, &dev)?
            };
            layers.push(DecoderLayer {
                attn_norm: norm(ld, "attn_norm", e)?,
                attention,
                attn_post_norm: if ls.post_norms { Some(norm(ld, "post_attention_norm", e)?) } else { None },
                ffn_norm: norm(ld, "ffn_norm", e)?,
                mlp,
                ffn_post_norm: if ls.post_norms { Some(norm(ld, "post_ffw_norm", e)?) } else { None },
                device: dev,
            });
        }
        let output_device = placement.output_device()?;
        let output_norm = RmsNorm::new(ld.vector("output_norm.weight", e, &output_device)?, p.rms_eps);
        // Many small models tie the output head to the token embeddings.
        let output = if ld.has("output.weight") {
            ld.linear("output.weight", &[e, p.vocab], &output_device)?
        } else if output_device.is_cpu() {
            table.clone()
        } else {
            ld.tied_copy("token_embd.weight", &output_device)?
        };
        let output_bias = ld.optional_vector("output.bias", p.vocab, &output_device)?;
        ld.finish(architecture)?;
        Ok(Transformer {
            n_embd: e,
            embeddings: TokenEmbeddings::new(&table)?,
            embedding_scale: spec.embedding_scale,
            layers,
            output_norm,
            output,
            output_bias,
            output_device,
            final_softcap: spec.final_softcap,
            rope: spec.rope,
        })
    }
}

impl Decoder for Transformer {
    fn forward(
        &self,
        cache: &mut KvCache,
        ropes: &RopeTables,
        tokens: &[u32],
        pos: usize,
        all: bool,
    ) -> Result<Tensor> {
        let seq = tokens.len();
        let mut x = self.embeddings.lookup(tokens, self.n_embd)?;
        if let Some(scale) = self.embedding_scale {
            x = (x * f64::from(scale))?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            x = x.to_device(&layer.device)?;
            let rope = ropes.for_layer(layer.attention.sliding_window.is_some());
            x = layer.forward(&x, cache, i, rope, pos)?;
        }
        let x = x.to_device(&self.output_device)?;
        let x = if all { x } else { x.narrow(0, seq - 1, 1)? };
        let x = self.output_norm.forward(&x)?;
        let mut logits = add_bias(self.output.forward(&x)?, self.output_bias.as_ref())?;
        if let Some(cap) = self.final_softcap {
            logits = ((logits / f64::from(cap))?.tanh()? * f64::from(cap))?;
        }
        Ok(logits.to_device(&Device::Cpu)?)
    }

    fn rope_tables(&self, ctx: usize, base: f64, scale: f64) -> Result<RopeTables> {
        self.rope.tables(ctx, base, scale)
    }

    /// Each layer's matrices, then the output head.
    fn linears(&self) -> Vec<&Linear> {
        self.layers.iter().flat_map(DecoderLayer::linears).chain([&self.output]).collect()
    }

    fn token_embeddings(&self) -> &TokenEmbeddings {
        &self.embeddings
    }

    fn block_devices(&self) -> Vec<Device> {
        self.layers.iter().map(|l| l.device.clone()).collect()
    }
}
