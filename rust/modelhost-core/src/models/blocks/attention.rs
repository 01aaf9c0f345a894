//! Causal grouped-query attention on candle tensors, for the GPU placement (the CPU runs
//! `kernels::f16_attention` over the f16 cache), rounded as llama.cpp's f16 cache rounds it.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::kernels::f16_attention::Heads;

/// Round to f16 precision, keeping f32 storage.
pub(crate) fn round_f16(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F16)?.to_dtype(DType::F32)?)
}

/// `-inf` above the diagonal for a chunk of `seq` queries starting at `pos`; none for one query.
pub(crate) fn causal_mask(seq: usize, pos: usize) -> Result<Option<Tensor>> {
    if seq == 1 {
        return Ok(None);
    }
    let total = pos + seq;
    let mask: Vec<f32> =
        (0..seq).flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Ok(Some(Tensor::from_vec(mask, (seq, total), &Device::Cpu)?))
}

/// Grouped-query attention: queries `(n_head, seq, hd)` against keys/values `(n_kv, total, hd)`, the scores
/// multiplied by `scale`; f16-rounded probabilities.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    h: Heads,
    scale: f32,
) -> Result<Tensor> {
    let seq = q.dim(1)?;
    let total = k.dim(1)?;
    let group = h.n_head / h.n_kv;
    // Fold the query heads that share a kv head into the rows of one matmul.
    let q = q.reshape((h.n_kv, group * seq, h.hd))?;
    let mut scores = (q.matmul(&k.t()?)? * f64::from(scale))?;
    if let Some(mask) = mask {
        let mask = mask.to_device(q.device())?;
        scores =
            scores.reshape((h.n_kv, group, seq, total))?.broadcast_add(&mask)?.reshape((h.n_kv, group * seq, total))?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let probs = round_f16(&probs)?;
    Ok(probs.matmul(v)?.reshape((h.n_head, seq, h.hd))?)
}
