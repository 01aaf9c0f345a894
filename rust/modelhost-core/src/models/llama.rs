//! Llama: pre-norm blocks of grouped-query attention with RoPE and a gated (SwiGLU) MLP, RMS norms, and an
//! output head that may be tied to the token embeddings. Tensor names are llama.cpp's (`blk.N.attn_q.weight`, …).
//!
//! The template for further architectures: a file like this one reads its hyper-parameters (`params`),
//! loads its weights with `GgufLoader` into the shared `blocks`, and implements `Decoder`.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::blocks::embeddings::TokenEmbeddings;
use super::blocks::kv_cache::KvCache;
use super::blocks::linear::Linear;
use super::blocks::mlp::GatedMlp;
use super::blocks::norm::RmsNorm;
use super::blocks::rope::Rope;
use super::gguf_loader::GgufLoader;
use super::params::LlmParams;
use super::Decoder;
use crate::error::Result;
use crate::formats::gguf::GgufHeader;
use crate::host::placement::Placement;

/// Llama's hyper-parameters: the common decoder keys, nothing of its own.
pub(crate) fn params(header: &GgufHeader, path: &Path) -> Result<LlmParams> {
    LlmParams::from_header(header, path)
}

/// One transformer block, on one device.
struct Block {
    attn_norm: RmsNorm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: RmsNorm,
    mlp: GatedMlp,
    device: Device,
}

/// A loaded llama decoder.
pub(crate) struct Llama {
    params: LlmParams,
    embeddings: TokenEmbeddings,
    blocks: Vec<Block>,
    output_norm: RmsNorm,
    output: Linear,
    output_device: Device,
}

impl Llama {
    /// Load every tensor, block `i` on `placement`'s device for it.
    pub(crate) fn load(ld: &mut GgufLoader<'_, '_, '_>, params: &LlmParams, placement: &Placement) -> Result<Self> {
        let p = params;
        let (e, kv) = (p.n_embd, p.n_head_kv * p.head_dim);
        // Ids are checked against the vocabulary before every lookup (`LlmModel::check_ids`).
        let table = ld.linear("token_embd.weight", &[e, p.vocab], &Device::Cpu)?;

        let mut blocks = Vec::with_capacity(p.n_layer);
        for i in 0..p.n_layer {
            let dev = placement.block_device(i)?;
            let name = |s: &str| format!("blk.{i}.{s}.weight");
            let ff = ld.info(&name("ffn_gate"))?.dims.get(1).copied().unwrap_or(0);
            blocks.push(Block {
                attn_norm: RmsNorm::new(ld.vector(&name("attn_norm"), e, &dev)?, p.rms_eps),
                wq: ld.linear(&name("attn_q"), &[e, e], &dev)?,
                wk: ld.linear(&name("attn_k"), &[e, kv], &dev)?,
                wv: ld.linear(&name("attn_v"), &[e, kv], &dev)?,
                wo: ld.linear(&name("attn_output"), &[e, e], &dev)?,
                ffn_norm: RmsNorm::new(ld.vector(&name("ffn_norm"), e, &dev)?, p.rms_eps),
                mlp: GatedMlp {
                    gate: ld.linear(&name("ffn_gate"), &[e, ff], &dev)?,
                    up: ld.linear(&name("ffn_up"), &[e, ff], &dev)?,
                    down: ld.linear(&name("ffn_down"), &[ff, e], &dev)?,
                },
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
        Ok(Llama {
            params: params.clone(),
            embeddings: TokenEmbeddings::new(&table)?,
            blocks,
            output_norm,
            output,
            output_device,
        })
    }
}

impl Decoder for Llama {
    fn forward(&self, cache: &mut KvCache, rope: &Rope, tokens: &[u32], pos: usize, all: bool) -> Result<Tensor> {
        let p = &self.params;
        let seq = tokens.len();
        let mut x = self.embeddings.lookup(tokens, p.n_embd)?;
        let scale = 1.0 / (p.head_dim as f32).sqrt();
        for (i, b) in self.blocks.iter().enumerate() {
            x = x.to_device(&b.device)?;
            let h = b.attn_norm.forward(&x)?;
            let q = b.wq.forward(&h)?.reshape((1, seq, p.n_head, p.head_dim))?.transpose(1, 2)?.contiguous()?;
            let k = b.wk.forward(&h)?.reshape((1, seq, p.n_head_kv, p.head_dim))?.transpose(1, 2)?.contiguous()?;
            let v = b.wv.forward(&h)?.reshape((seq, p.n_head_kv, p.head_dim))?.transpose(0, 1)?.contiguous()?;
            let (cos, sin) = rope.at(pos, seq, &b.device)?;
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?.squeeze(0)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?.squeeze(0)?;
            let attn = cache.attend(i, &q, &k, &v, pos, scale, None)?;
            x = (x + b.wo.forward(&attn)?)?;
            let h = b.ffn_norm.forward(&x)?;
            x = (x + b.mlp.forward(&h)?)?;
        }
        let x = x.to_device(&self.output_device)?;
        let x = if all { x } else { x.narrow(0, seq - 1, 1)? };
        let x = self.output_norm.forward(&x)?;
        Ok(self.output.forward(&x)?.to_device(&Device::Cpu)?)
    }

    /// Each block's seven matrices, then the output head.
    fn linears(&self) -> Vec<&Linear> {
        let blocks = self.blocks.iter().flat_map(|b| [&b.wq, &b.wk, &b.wv, &b.wo, &b.mlp.gate, &b.mlp.up, &b.mlp.down]);
        blocks.chain([&self.output]).collect()
    }

    fn token_embeddings(&self) -> &TokenEmbeddings {
        &self.embeddings
    }

    fn block_devices(&self) -> Vec<Device> {
        self.blocks.iter().map(|b| b.device.clone()).collect()
    }
}
