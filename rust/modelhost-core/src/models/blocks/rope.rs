//! Rotary position embeddings as llama.cpp computes them (`ggml_rope_ext` without YaRN): cos/sin tables built
//! once per instance for its context, in f32 with ggml's recurrence for the angles, then applied to queries and
//! keys in either of ggml's two layouts.

use candle_core::{DType, Device, Tensor, D};

use crate::error::Result;
use crate::kernels::ggml_rows;

/// Which values of a head rotate together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RopeStyle {
    /// Adjacent pairs `(x0, x1), (x2, x3), …`: llama.cpp's "normal" RoPE (llama).
    Interleaved,
    /// The first half of the rotated values against the second half: GPT-NeoX's layout
    /// (llama.cpp `LLAMA_ROPE_TYPE_NEOX`: qwen2, qwen3, phi3, gemma3).
    Neox,
}

/// How one group of layers rotates, everything but the position.
#[derive(Debug, Clone)]
pub(crate) struct RopeConfig {
    pub(crate) style: RopeStyle,
    /// Values rotated at the start of each head (`rope.dimension_count`); the rest pass through unchanged.
    pub(crate) dims: usize,
    /// Base frequency.
    pub(crate) base: f64,
    /// Linear position scale (`1 / rope.scaling.factor`).
    pub(crate) scale: f64,
    /// Multiplies cos and sin (`rope.scaling.attn_factor`, which Phi-3's long-context files carry).
    pub(crate) attn_factor: f32,
    /// Divisors of the `dims / 2` frequencies (Llama 3's `rope_freqs.weight`, Phi-3's short or long factors).
    pub(crate) factors: Option<Vec<f32>>,
}

/// RoPE cos/sin tables for every position of the context.
pub(crate) struct Rope {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
    dims: usize,
}

impl Rope {
    /// Tables for `ctx` positions. The angle of frequency `i` at position `p` is
    /// `scale · p · base^(-2i/dims) / factor[i]`, the power taken by repeated multiplication in f32 as ggml's
    /// `ggml_rope_cache_init` does, so the tables equal llama.cpp's to the last bit.
    pub(crate) fn new(config: &RopeConfig, ctx: usize) -> Result<Self> {
        let half = config.dims / 2;
        let theta_scale = (config.base as f32).powf(-2.0 / config.dims as f32);
        let (scale, mscale) = (config.scale as f32, config.attn_factor);
        let mut cos = Vec::with_capacity(ctx * half);
        let mut sin = Vec::with_capacity(ctx * half);
        for p in 0..ctx {
            let mut theta = p as f32;
            for i in 0..half {
                let factor = config.factors.as_ref().map_or(1.0, |f| f[i]);
                let angle = scale * (theta / factor);
                cos.push(angle.cos() * mscale);
                sin.push(angle.sin() * mscale);
                theta *= theta_scale;
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos, (ctx, half), &Device::Cpu)?,
            sin: Tensor::from_vec(sin, (ctx, half), &Device::Cpu)?,
            style: config.style,
            dims: config.dims,
        })
    }

    /// Rotate `x`, `(1, heads, seq, head_dim)` at positions `pos..pos + seq`.
    pub(crate) fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let (_, _, seq, head_dim) = x.dims4()?;
        let device = x.device();
        if device.is_cpu() && x.dtype() == DType::F32 {
            return self.apply_cpu(x, pos, seq, head_dim);
        }
        let cos = self.cos.narrow(0, pos, seq)?.to_device(device)?;
        let sin = self.sin.narrow(0, pos, seq)?.to_device(device)?;
        let rotate = |x: &Tensor| -> Result<Tensor> {
            Ok(match self.style {
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(x, &cos, &sin)?,
                RopeStyle::Neox => candle_nn::rotary_emb::rope(x, &cos, &sin)?,
            })
        };
        if self.dims == head_dim {
            return rotate(&x.contiguous()?);
        }
        let rotated = rotate(&x.narrow(D::Minus1, 0, self.dims)?.contiguous()?)?;
        let rest = x.narrow(D::Minus1, self.dims, head_dim - self.dims)?;
        Ok(Tensor::cat(&[&rotated, &rest], D::Minus1)?.contiguous()?)
    }

    /// `apply` on the CPU, with ggml's arithmetic (`ggml_rows::rotate_pairs`).
    fn apply_cpu(&self, x: &Tensor, pos: usize, seq: usize, head_dim: usize) -> Result<Tensor> {
        let half = self.dims / 2;
        let cos = self.cos.narrow(0, pos, seq)?.flatten_all()?.to_vec1::<f32>()?;
        let sin = self.sin.narrow(0, pos, seq)?.flatten_all()?.to_vec1::<f32>()?;
        let mut data = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (offset, stride) = match self.style {
            RopeStyle::Interleaved => (1, 2),
            RopeStyle::Neox => (half, 1),
        };
        for (r, row) in data.chunks_exact_mut(head_dim).enumerate() {
            let t = r % seq;
            ggml_rows::rotate_pairs(
                row,
                &cos[t * half..(t + 1) * half],
                &sin[t * half..(t + 1) * half],
                offset,
                stride,
            );
        }
        Ok(Tensor::from_vec(data, x.shape(), x.device())?)
    }
}

/// An instance's RoPE tables: one for the layers of full attention, and one for sliding-window layers where those
/// rotate differently (Gemma 3's local layers have a base of their own).
pub(crate) struct RopeTables {
    pub(crate) full: Rope,
    pub(crate) sliding: Option<Rope>,
}

impl RopeTables {
    /// The table of a layer: the sliding-window one for sliding-window layers where there is one.
    pub(crate) fn for_layer(&self, sliding_window: bool) -> &Rope {
        match (&self.sliding, sliding_window) {
            (Some(rope), true) => rope,
            _ => &self.full,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(style: RopeStyle, dims: usize, factors: Option<Vec<f32>>) -> RopeConfig {
        RopeConfig { style, dims, base: 10_000.0, scale: 1.0, attn_factor: 1.0, factors }
    }

    /// The rotation written out pair by pair, in f64.
    fn reference(x: &[f32], head_dim: usize, pos: usize, c: &RopeConfig) -> Vec<f32> {
        let mut out: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        for i in 0..c.dims / 2 {
            let factor = c.factors.as_ref().map_or(1.0, |f| f64::from(f[i]));
            let angle = c.scale * pos as f64 * c.base.powf(-2.0 * i as f64 / c.dims as f64) / factor;
            let (a, b) = match c.style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + c.dims / 2),
            };
            let (xa, xb) = (f64::from(x[a]), f64::from(x[b]));
            let m = f64::from(c.attn_factor);
            out[a] = (xa * angle.cos() - xb * angle.sin()) * m;
            out[b] = (xa * angle.sin() + xb * angle.cos()) * m;
        }
        assert_eq!(out.len(), head_dim);
        out.into_iter().map(|v| v as f32).collect()
    }

    #[test]
    fn rotations_match_the_formula_for_both_layouts_partial_dims_factors_and_scales() {
        let head_dim = 8;
        let x: Vec<f32> = (0..head_dim).map(|i| 0.3 * i as f32 - 1.0).collect();
        let cases = [
            config(RopeStyle::Interleaved, 8, None),
            config(RopeStyle::Neox, 8, None),
            config(RopeStyle::Neox, 4, None),
            config(RopeStyle::Interleaved, 8, Some(vec![1.0, 2.0, 4.0, 8.0])),
            RopeConfig { scale: 0.25, attn_factor: 1.2, ..config(RopeStyle::Neox, 8, Some(vec![1.0, 1.5, 3.0, 9.0])) },
        ];
        for c in &cases {
            let rope = Rope::new(c, 40).unwrap();
            let input = Tensor::from_vec(x.clone(), (1, 1, 1, head_dim), &Device::Cpu).unwrap();
            for pos in [0, 1, 7, 39] {
                let got = rope.apply(&input, pos).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let want = reference(&x, head_dim, pos, c);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-4, "{c:?} at {pos}: {got:?} vs {want:?}");
                }
            }
        }
    }
}
