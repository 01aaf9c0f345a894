//! RMS normalization with a learned scale, as llama-family blocks use it.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::kernels::ggml_rows;

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

    /// Normalize each row of `x`: on the CPU with llama.cpp's arithmetic (`ggml_rows::rms_norm`), elsewhere
    /// with candle's kernel.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !x.device().is_cpu() || x.dtype() != DType::F32 {
            return Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?);
        }
        let mut data = x.flatten_all()?.to_vec1::<f32>()?;
        ggml_rows::rms_norm(&mut data, &self.weight.to_vec1::<f32>()?, self.eps);
        Ok(Tensor::from_vec(data, x.shape(), x.device())?)
    }
}
