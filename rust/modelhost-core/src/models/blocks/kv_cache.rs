//! The KV cache: keys and values of every layer for the whole context, allocated (and made resident) up front.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::storage::resident_zeros;

/// Pre-allocated keys and values per layer, `(n_kv_heads, context, head_dim)`; written in place.
pub(crate) struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    /// A cache for `ctx` positions, one layer per device in `devices`; CPU layers are resident at once.
    pub(crate) fn new(devices: &[Device], n_kv: usize, ctx: usize, hd: usize) -> Result<Self> {
        let layers = devices
            .iter()
            .map(|d| {
                let shape = (n_kv, ctx, hd);
                if d.is_cpu() {
                    let k = Tensor::from_vec(resident_zeros(n_kv * ctx * hd), shape, d)?;
                    let v = Tensor::from_vec(resident_zeros(n_kv * ctx * hd), shape, d)?;
                    Ok((k, v))
                } else {
                    Ok((Tensor::zeros(shape, DType::F32, d)?, Tensor::zeros(shape, DType::F32, d)?))
                }
            })
            .collect::<Result<_>>()?;
        Ok(KvCache { layers })
    }

    /// Write `k`/`v` (`(n_kv, seq, hd)`) of `layer` at `pos`; the keys and values of positions `..pos + seq`.
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor, pos: usize) -> Result<(Tensor, Tensor)> {
        let (kc, vc) = &self.layers[layer];
        kc.slice_set(k, 1, pos)?;
        vc.slice_set(v, 1, pos)?;
        let total = pos + k.dim(1)?;
        Ok((kc.narrow(1, 0, total)?, vc.narrow(1, 0, total)?))
    }
}
