//! Token embeddings: the table as stored, rows dequantized on lookup (with llama.cpp's dequantization).

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::linear::Linear;
use crate::error::{Error, Result};
use crate::kernels::matrix::WeightMatrix;

/// The token embedding table, kept as stored on the CPU: rows are dequantized on lookup. Shares its memory
/// with the output head when the model ties the two.
pub(crate) struct TokenEmbeddings(Arc<WeightMatrix>);

impl TokenEmbeddings {
    /// The table behind `table` (the loaded `token_embd.weight`, which is always loaded for the CPU).
    pub(crate) fn new(table: &Linear) -> Result<Self> {
        match table {
            Linear::Cpu(m) => Ok(TokenEmbeddings(m.clone())),
            Linear::Candle(_) => Err(Error::NotSupported("token embeddings on a GPU".into())),
        }
    }

    /// The table.
    pub(crate) fn matrix(&self) -> &WeightMatrix {
        &self.0
    }

    /// Rows `ids` as an `(ids.len(), n_embd)` f32 tensor on the CPU; ids were checked against the vocabulary.
    pub(crate) fn lookup(&self, ids: &[u32], n_embd: usize) -> Result<Tensor> {
        let mut rows = vec![0f32; ids.len() * n_embd];
        for (&id, row) in ids.iter().zip(rows.chunks_exact_mut(n_embd)) {
            self.0.dequantize_row(id as usize, row);
        }
        Ok(Tensor::from_vec(rows, (ids.len(), n_embd), &Device::Cpu)?)
    }
}
