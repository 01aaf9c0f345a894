//! The query/key/value projection of an attention layer, in either of the layouts llama.cpp reads
//! (`create_tensor_qkv`): three matrices (`attn_q`, `attn_k`, `attn_v`) or one fused matrix (`attn_qkv`, Phi-3),
//! each with optional biases (Qwen 2).

use candle_core::{Device, Tensor, D};

use super::attention::add_bias;
use super::linear::Linear;
use crate::error::Result;
use crate::models::gguf_loader::GgufLoader;

/// The weights of the projection.
pub(crate) enum QkvWeights {
    /// `attn_q`, `attn_k`, `attn_v`.
    Separate { q: Linear, k: Linear, v: Linear },
    /// `attn_qkv`: one matrix whose output is the queries, then the keys, then the values.
    Fused(Linear),
}

/// Queries, keys and values from the normalized hidden states.
pub(crate) struct QkvProjection {
    pub(crate) weights: QkvWeights,
    /// Biases added to the queries, keys and values (each optional).
    biases: [Option<Tensor>; 3],
    /// Output widths: queries (`n_head · head_dim`) and keys or values (`n_kv · head_dim`).
    q_width: usize,
    kv_width: usize,
}

impl QkvProjection {
    /// Layer `layer`'s projection from width `n_embd` to queries of `q_width` and keys and values of `kv_width`
    /// each, on `device`: fused if the file has `attn_qkv`, else the three matrices; biases where the file has them
    /// (one fused bias, or one per part), as llama.cpp reads them.
    pub(crate) fn load(
        ld: &mut GgufLoader<'_, '_, '_>,
        layer: usize,
        n_embd: usize,
        q_width: usize,
        kv_width: usize,
        device: &Device,
    ) -> Result<Self> {
        let name = |part: &str, kind: &str| format!("blk.{layer}.{part}.{kind}");
        let widths = [q_width, kv_width, kv_width];
        let total = q_width + 2 * kv_width;
        let part_biases = |ld: &mut GgufLoader<'_, '_, '_>| -> Result<[Option<Tensor>; 3]> {
            let mut out = [None, None, None];
            for ((slot, part), width) in out.iter_mut().zip(["attn_q", "attn_k", "attn_v"]).zip(widths) {
                *slot = ld.optional_vector(&name(part, "bias"), width, device)?;
            }
            Ok(out)
        };
        if ld.has(&name("attn_qkv", "weight")) {
            let fused = ld.linear(&name("attn_qkv", "weight"), &[n_embd, total], device)?;
            let biases = match ld.optional_vector(&name("attn_qkv", "bias"), total, device)? {
                Some(b) => [
                    Some(b.narrow(0, 0, q_width)?),
                    Some(b.narrow(0, q_width, kv_width)?),
                    Some(b.narrow(0, q_width + kv_width, kv_width)?),
                ],
                None => part_biases(ld)?,
            };
            return Ok(QkvProjection { weights: QkvWeights::Fused(fused), biases, q_width, kv_width });
        }
        let weights = QkvWeights::Separate {
            q: ld.linear(&name("attn_q", "weight"), &[n_embd, q_width], device)?,
            k: ld.linear(&name("attn_k", "weight"), &[n_embd, kv_width], device)?,
            v: ld.linear(&name("attn_v", "weight"), &[n_embd, kv_width], device)?,
        };
        Ok(QkvProjection { weights, biases: part_biases(ld)?, q_width, kv_width })
    }

    /// `(q, k, v)`, `(seq, width)` each, for `h` of shape `(seq, n_embd)`.
    pub(crate) fn forward(&self, h: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (q, k, v) = match &self.weights {
            QkvWeights::Separate { q, k, v } => (q.forward(h)?, k.forward(h)?, v.forward(h)?),
            QkvWeights::Fused(w) => {
                let all = w.forward(h)?;
                let (qw, kvw) = (self.q_width, self.kv_width);
                (all.narrow(D::Minus1, 0, qw)?, all.narrow(D::Minus1, qw, kvw)?, all.narrow(D::Minus1, qw + kvw, kvw)?)
            }
        };
        let [bq, bk, bv] = &self.biases;
        Ok((add_bias(q, bq.as_ref())?, add_bias(k, bk.as_ref())?, add_bias(v, bv.as_ref())?))
    }

    /// The weight matrices.
    pub(crate) fn linears(&self) -> Vec<&Linear> {
        match &self.weights {
            QkvWeights::Separate { q, k, v } => vec![q, k, v],
            QkvWeights::Fused(w) => vec![w],
        }
    }
}
