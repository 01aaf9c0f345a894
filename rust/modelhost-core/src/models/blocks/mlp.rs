//! The gated feed-forward block of llama-family models (SwiGLU).

use candle_core::Tensor;

use super::linear::Linear;
use crate::error::Result;

/// `down(silu(gate(x)) · up(x))`.
pub(crate) struct GatedMlp {
    /// `ffn_gate`, `[n_embd → n_ff]`.
    pub(crate) gate: Linear,
    /// `ffn_up`, `[n_embd → n_ff]`.
    pub(crate) up: Linear,
    /// `ffn_down`, `[n_ff → n_embd]`.
    pub(crate) down: Linear,
}

impl GatedMlp {
    /// The block's output for the normalized hidden states `h`.
    pub(crate) fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let gate = self.gate.forward(h)?.silu()?;
        self.down.forward(&(gate * self.up.forward(h)?)?)
    }
}
