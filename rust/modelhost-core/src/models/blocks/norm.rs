//! RMS normalization with a learned scale, as llama-family blocks use it.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::kernels::ggml_rows;

/// `x / rms(x) · weight`, row by row.
pub(crate) struct RmsNorm {
    weight: Tensor,
    /// The scale as a slice, for the CPU kernel: read once here, not on every call.
    host_weight: Option<Vec<f32>>,
    eps: f32,
}

impl RmsNorm {
    /// A norm with scale `weight` (one value per feature) and epsilon `eps`.
    pub(crate) fn new(weight: Tensor, eps: f64) -> Self {
        let host_weight = if weight.device().is_cpu() { weight.to_vec1::<f32>().ok() } else { None };
        RmsNorm { weight, host_weight, eps: eps as f32 }
    }

    /// Normalize each row of `x`: on the CPU with llama.cpp's arithmetic (`ggml_rows::rms_norm`), elsewhere
    /// with candle's kernel.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.host_weight {
            Some(w) if x.device().is_cpu() && x.dtype() == DType::F32 => {
                let mut data = x.flatten_all()?.to_vec1::<f32>()?;
                ggml_rows::rms_norm(&mut data, w, self.eps);
                Ok(Tensor::from_vec(data, x.shape(), x.device())?)
            }
            _ => Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?),
        }
    }
}
