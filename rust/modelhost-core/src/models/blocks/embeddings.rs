//! Token embeddings: the table as stored, rows dequantized on lookup.

use std::sync::Arc;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use super::linear::Linear;
use crate::error::Result;
use crate::kernels::QuantMatrix;

/// The token embedding table, kept as stored: rows are dequantized on lookup. Shares its memory with
/// the output head when the model ties the two.
pub(crate) enum TokenEmbeddings {
    Quant(Arc<QuantMatrix>, GgmlDType),
    Candle(Arc<QTensor>),
    Dense(Tensor),
}

impl TokenEmbeddings {
    /// The table behind `table` (the loaded `token_embd.weight`), stored as `dtype`.
    pub(crate) fn new(table: &Linear, dtype: GgmlDType) -> Result<Self> {
        Ok(match table {
            Linear::Quant(m) => TokenEmbeddings::Quant(m.clone(), dtype),
            Linear::Candle(QMatMul::QTensor(q)) => TokenEmbeddings::Candle(q.clone()),
            Linear::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                TokenEmbeddings::Dense(t.to_dtype(DType::F32)?)
            }
        })
    }

    /// Rows `ids` as an `(ids.len(), n_embd)` f32 tensor on the CPU; ids were checked against the vocabulary.
    pub(crate) fn lookup(&self, ids: &[u32], n_embd: usize) -> Result<Tensor> {
        let dequantize_row = |dtype: GgmlDType, row: &[u8]| -> Result<Vec<f32>> {
            Ok(qtensor_from_ggml(dtype, row, vec![n_embd], &Device::Cpu)?.dequantize(&Device::Cpu)?.to_vec1::<f32>()?)
        };
        let mut rows = Vec::with_capacity(ids.len() * n_embd);
        for &id in ids {
            let id = id as usize;
            match self {
                TokenEmbeddings::Quant(m, dtype) => rows.extend(dequantize_row(*dtype, m.row_bytes(id))?),
                TokenEmbeddings::Candle(q) => {
                    let data = q.data()?;
                    let row_bytes = data.len() / q.shape().dims()[0];
                    rows.extend(dequantize_row(q.dtype(), &data[id * row_bytes..(id + 1) * row_bytes])?);
                }
                TokenEmbeddings::Dense(t) => rows.extend(t.get(id)?.to_vec1::<f32>()?),
            }
        }
        Ok(Tensor::from_vec(rows, (ids.len(), n_embd), &Device::Cpu)?)
    }
}
