//! RMS normalization with a learned scale, as llama-family blocks use it.

use candle_core::Tensor;

use crate::error::Result;

/// `x / rms(x) · weight`, row by row.
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// A norm with scale `weight` (one value per feature) and epsilon `eps`.
    pub(crate) fn new(weight: Tensor, eps: f64) -> Self {
        RmsNorm { weight, eps: eps as f32 }
    }

    /// Normalize each row of `x`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }
}
