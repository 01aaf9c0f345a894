//! A weight matrix and its product with activations.

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{Module, Tensor, TensorId};

use crate::error::Result;
use crate::kernels::act::LayerInput;
use crate::kernels::matrix::WeightMatrix;

/// A weight matrix: on the CPU, our kernels for every weight type, on the blocks as stored (in the file's
/// mapping or a copy); on a GPU, candle's quantized matmul.
#[derive(Clone)]
pub(crate) enum Linear {
    /// Our kernels.
    Cpu(Arc<WeightMatrix>),
    /// candle's quantized (or dense) matmul, for the CUDA placement.
    Candle(QMatMul),
}

thread_local! {
    /// The last layer input converted for the CPU kernels, by tensor. The matrices that read the same input
    /// (queries, keys and values; gate and up) are called one after another with the same tensor, so they
    /// share one conversion per activation format. Tensor ids are never reused, so a stale entry can only
    /// miss.
    static LAST_INPUT: RefCell<Option<(TensorId, Arc<LayerInput>)>> = const { RefCell::new(None) };
}

/// `x` (`(rows, cols)`) as a layer input for the kernels, converted once while it is the current input.
fn layer_input(x: &Tensor) -> Result<Arc<LayerInput>> {
    if let Some(hit) = LAST_INPUT.with_borrow(|last| last.as_ref().filter(|(id, _)| *id == x.id()).map(|e| e.1.clone()))
    {
        return Ok(hit);
    }
    let (rows, cols) = x.dims2()?;
    let input = Arc::new(LayerInput::new(x.flatten_all()?.to_vec1::<f32>()?, rows, cols));
    LAST_INPUT.set(Some((x.id(), input.clone())));
    Ok(input)
}

impl Linear {
    /// `x · Wᵀ` for `x` of shape `(rows, cols)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Candle(m) => Ok(m.forward(x)?),
            Linear::Cpu(w) => {
                let input = layer_input(x)?;
                debug_assert_eq!(input.cols(), w.cols());
                let y = w.matmul(&input);
                Ok(Tensor::from_vec(y, (input.rows(), w.rows()), x.device())?)
            }
        }
    }
}
