//! The KV cache: keys and values of every layer for the whole context, in f16 as llama.cpp keeps them, and
//! attention over it. On the CPU the cache is reserved up front and becomes resident as the context fills
//! (`ZeroedPages`), so a new instance costs almost nothing until it is used; on a GPU it is candle tensors.

use candle_core::{DType, Device, Tensor};
use half::f16;

use super::attention::{attention, attention_mask, round_f16};
use crate::error::{Error, Result};
use crate::kernels::f16_attention::{self, Heads};
use crate::storage::ZeroedPages;

/// One layer's keys and values, `(n_kv, ctx, head_dim)` each.
enum LayerCache {
    /// f16 on the CPU.
    Cpu { k: ZeroedPages<f16>, v: ZeroedPages<f16> },
    /// On a GPU: f32 tensors of f16-rounded values, written in place.
    Gpu { k: Tensor, v: Tensor },
}

/// The keys and values of every layer for `ctx` positions.
pub(crate) struct KvCache {
    layers: Vec<LayerCache>,
    heads: Heads,
    ctx: usize,
}

impl KvCache {
    /// A cache for `ctx` positions, one layer per device in `devices`. Nothing is made resident here.
    pub(crate) fn new(devices: &[Device], heads: Heads, ctx: usize) -> Result<Self> {
        let len = heads.n_kv * ctx * heads.head_dim;
        let layers = devices
            .iter()
            .map(|d| {
                if d.is_cpu() {
                    let reserve = || {
                        // SAFETY: zero bits are an f16 (+0.0).
                        unsafe { ZeroedPages::<f16>::new(len) }.map_err(|e| {
                            Error::InvalidConfig(format!(
                                "the KV cache for {ctx} tokens cannot be reserved ({e}); lower contextLength"
                            ))
                        })
                    };
                    Ok(LayerCache::Cpu { k: reserve()?, v: reserve()? })
                } else {
                    let shape = (heads.n_kv, ctx, heads.head_dim);
                    Ok(LayerCache::Gpu {
                        k: Tensor::zeros(shape, DType::F32, d)?,
                        v: Tensor::zeros(shape, DType::F32, d)?,
                    })
                }
            })
            .collect::<Result<_>>()?;
        Ok(KvCache { layers, heads, ctx })
    }

    /// Store a chunk's keys and values `k`, `v` (`(n_kv, seq, head_dim)`, positions `pos..`) in layer `layer`,
    /// and attend with its queries `q` (`(n_head, seq, head_dim)`, RoPE applied) over every position so far:
    /// `(seq, n_head · head_dim)`. Scores are multiplied by `scale`; `window` hides keys that many positions or
    /// more behind a query (a sliding window).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attend(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pos: usize,
        scale: f32,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let h = self.heads;
        let seq = q.dim(1)?;
        if pos + seq > self.ctx {
            return Err(Error::ContextLengthExceeded { tokens: pos + seq, context_length: self.ctx });
        }
        match &mut self.layers[layer] {
            LayerCache::Cpu { k: kc, v: vc } => {
                let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
                let (q, k, v) = (flat(q)?, flat(k)?, flat(v)?);
                f16_attention::store(h, &k, &v, kc.as_mut_slice(), vc.as_mut_slice(), self.ctx, pos, seq);
                let mut out = vec![0f32; seq * h.n_head * h.head_dim];
                f16_attention::attend(h, &q, kc.as_slice(), vc.as_slice(), self.ctx, pos, seq, scale, window, &mut out);
                Ok(Tensor::from_vec(out, (seq, h.n_head * h.head_dim), &Device::Cpu)?)
            }
            LayerCache::Gpu { k: kc, v: vc } => {
                // As llama.cpp keeps K and V in f16 and multiplies in f16: round the same way to agree with it.
                let (q, k, v) = (round_f16(q)?, round_f16(k)?, round_f16(v)?);
                kc.slice_set(&k, 1, pos)?;
                vc.slice_set(&v, 1, pos)?;
                let total = pos + seq;
                let (k_all, v_all) = (kc.narrow(1, 0, total)?, vc.narrow(1, 0, total)?);
                let mask = attention_mask(seq, pos, window)?;
                let attn = attention(&q, &k_all, &v_all, mask.as_ref(), h, scale)?;
                Ok(attn.transpose(0, 1)?.reshape((seq, h.n_head * h.head_dim))?)
            }
        }
    }
}
