//! Rotary position embeddings: cos/sin tables computed once per instance for its context.

use candle_core::{Device, Tensor};

use crate::error::Result;

/// RoPE cos/sin tables for every position of the context.
pub(crate) struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// Tables for `ctx` positions of heads of `head_dim`, with base frequency `base` and linear scale `scale`.
    pub(crate) fn new(head_dim: usize, ctx: usize, base: f64, scale: f64) -> Result<Self> {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half).map(|i| (1.0 / base.powf(2.0 * i as f64 / head_dim as f64)) as f32).collect();
        let mut angles = Vec::with_capacity(ctx * half);
        for p in 0..ctx {
            let p = p as f32 * scale as f32;
            angles.extend(inv.iter().map(|f| p * f));
        }
        let angles = Tensor::from_vec(angles, (ctx, half), &Device::Cpu)?;
        Ok(Rope { cos: angles.cos()?, sin: angles.sin()? })
    }

    /// cos and sin for positions `pos..pos + seq`, on `device`.
    pub(crate) fn at(&self, pos: usize, seq: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.narrow(0, pos, seq)?.to_device(device)?, self.sin.narrow(0, pos, seq)?.to_device(device)?))
    }
}
