//! A weight matrix and its product with activations.

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{Module, Tensor};

use crate::error::Result;
use crate::kernels::QuantMatrix;

/// A weight matrix: our AVX2 kernels for Q4_1 and Q8_0 on the CPU (candle's Q4_1 is scalar), candle's
/// otherwise.
#[derive(Clone)]
pub(crate) enum Linear {
    /// Our kernels, on the blocks as stored (in the file's mapping or a copy).
    Quant(Arc<QuantMatrix>),
    /// candle's quantized (or dense) matmul.
    Candle(QMatMul),
}

impl Linear {
    /// `x · Wᵀ` for `x` of shape `(rows, cols)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Candle(m) => Ok(m.forward(x)?),
            Linear::Quant(w) => {
                let (m, k) = x.dims2()?;
                debug_assert_eq!(k, w.cols());
                let y = w.matmul(&x.flatten_all()?.to_vec1::<f32>()?, m);
                Ok(Tensor::from_vec(y, (m, w.rows()), x.device())?)
            }
        }
    }
}
