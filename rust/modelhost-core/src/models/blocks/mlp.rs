//! The gated feed-forward block: `down(act(gate(x)) · up(x))`, with SiLU (SwiGLU: llama, qwen, phi3) or GELU
//! (GeGLU: gemma3), and the gate and up projections as two matrices or one fused matrix (Phi-3's `ffn_up`).

use std::sync::OnceLock;

use candle_core::{Device, Tensor, D};
use half::f16;

use super::attention::add_bias;
use super::linear::Linear;
use crate::error::Result;
use crate::kernels::ggml_rows;
use crate::models::gguf_loader::GgufLoader;

/// The gate's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    /// `x · sigmoid(x)`.
    Silu,
    /// GELU's tanh approximation, as ggml's CPU backend computes it: through a table over f16 inputs, with f16
    /// outputs (`ggml_vec_geglu_f32` under `GGML_GELU_FP16`).
    GeluTanh,
}

/// The gate and up projections.
pub(crate) enum GateUp {
    /// `ffn_gate` and `ffn_up`, `[n_embd → n_ff]` each, with their biases where the file has them (llama).
    Separate { gate: Linear, up: Linear, gate_bias: Option<Tensor>, up_bias: Option<Tensor> },
    /// One matrix `[n_embd → 2·n_ff]` whose output is the gate, then the up projection.
    Fused(Linear),
}

/// A gated feed-forward block.
pub(crate) struct GatedMlp {
    pub(crate) gate_up: GateUp,
    /// `ffn_down`, `[n_ff → n_embd]`, and its bias where the file has one (llama).
    pub(crate) down: Linear,
    pub(crate) down_bias: Option<Tensor>,
    pub(crate) activation: Activation,
}

impl GatedMlp {
    /// Layer `layer`'s `ffn_gate`, `ffn_up` and `ffn_down` on `device`; the width `n_ff` is `ffn_gate`'s.
    pub(crate) fn load(
        ld: &mut GgufLoader<'_, '_, '_>,
        layer: usize,
        n_embd: usize,
        activation: Activation,
        device: &Device,
    ) -> Result<Self> {
        let name = |s: &str| format!("blk.{layer}.{s}.weight");
        let bias = |s: &str| format!("blk.{layer}.{s}.bias");
        let n_ff = ld.info(&name("ffn_gate"))?.dims.get(1).copied().unwrap_or(0);
        Ok(GatedMlp {
            gate_up: GateUp::Separate {
                gate: ld.linear(&name("ffn_gate"), &[n_embd, n_ff], device)?,
                up: ld.linear(&name("ffn_up"), &[n_embd, n_ff], device)?,
                gate_bias: ld.optional_vector(&bias("ffn_gate"), n_ff, device)?,
                up_bias: ld.optional_vector(&bias("ffn_up"), n_ff, device)?,
            },
            down: ld.linear(&name("ffn_down"), &[n_ff, n_embd], device)?,
            down_bias: ld.optional_vector(&bias("ffn_down"), n_embd, device)?,
            activation,
        })
    }

    /// Layer `layer`'s fused `ffn_up` (`[n_embd → 2·n_ff]`, gate first) and `ffn_down` on `device`; the width
    /// `n_ff` is `ffn_down`'s.
    pub(crate) fn load_fused(
        ld: &mut GgufLoader<'_, '_, '_>,
        layer: usize,
        n_embd: usize,
        activation: Activation,
        device: &Device,
    ) -> Result<Self> {
        let name = |s: &str| format!("blk.{layer}.{s}.weight");
        let n_ff = ld.info(&name("ffn_down"))?.dims.first().copied().unwrap_or(0);
        Ok(GatedMlp {
            gate_up: GateUp::Fused(ld.linear(&name("ffn_up"), &[n_embd, 2 * n_ff], device)?),
            down: ld.linear(&name("ffn_down"), &[n_ff, n_embd], device)?,
            down_bias: None,
            activation,
        })
    }

    /// The block's output for the normalized hidden states `h`.
    pub(crate) fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate, up, gate_bias, up_bias } => {
                (add_bias(gate.forward(h)?, gate_bias.as_ref())?, add_bias(up.forward(h)?, up_bias.as_ref())?)
            }
            GateUp::Fused(w) => {
                let both = w.forward(h)?;
                let n_ff = both.dim(D::Minus1)? / 2;
                (both.narrow(D::Minus1, 0, n_ff)?, both.narrow(D::Minus1, n_ff, n_ff)?)
            }
        };
        let hidden = match self.activation {
            Activation::Silu if gate.device().is_cpu() => {
                let n = gate.dim(D::Minus1)?;
                let mut g = gate.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                ggml_rows::swiglu(&mut g, &up.contiguous()?.flatten_all()?.to_vec1::<f32>()?, n);
                Tensor::from_vec(g, gate.shape(), gate.device())?
            }
            Activation::Silu => (gate.silu()? * up)?,
            Activation::GeluTanh => (gelu_tanh_f16(&gate)? * up)?,
        };
        add_bias(self.down.forward(&hidden)?, self.down_bias.as_ref())
    }

    /// The weight matrices.
    pub(crate) fn linears(&self) -> Vec<&Linear> {
        match &self.gate_up {
            GateUp::Separate { gate, up, .. } => vec![gate, up, &self.down],
            GateUp::Fused(w) => vec![w, &self.down],
        }
    }
}

/// `0.5·x·(1 + tanh(√(2/π)·x·(1 + 0.044715·x²)))` in f32, ggml's `ggml_gelu_f32` as GCC compiles it on x86
/// (`1 + a·x·x` contracted into one fused multiply-add).
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044_715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (COEF_A * x).mul_add(x, 1.0)).tanh())
}

/// GELU (tanh) of every f16 value, rounded to f16: ggml's `ggml_table_gelu_f16`.
fn gelu_table() -> &'static [f16] {
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    TABLE.get_or_init(|| (0..=u16::MAX).map(|bits| f16::from_f32(gelu_tanh(f16::from_bits(bits).to_f32()))).collect())
}

/// GELU (tanh) of `x` as ggml's CPU backend computes it: 0 below -10, the identity above 10, and in between the
/// table's value at `x` rounded to f16.
fn gelu_tanh_f16(x: &Tensor) -> Result<Tensor> {
    let table = gelu_table();
    let values: Vec<f32> = x
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| match v {
            v if v <= -10.0 => 0.0,
            v if v >= 10.0 => v,
            v => table[usize::from(f16::from_f32(v).to_bits())].to_f32(),
        })
        .collect();
    Ok(Tensor::from_vec(values, x.shape(), x.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_follows_ggml_table() {
        let x = Tensor::new(&[-12.0f32, -1.0, 0.0, 0.5, 1.0, 3.0, 11.0], &Device::Cpu).unwrap();
        let y = gelu_tanh_f16(&x).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y[0], 0.0);
        assert_eq!(y[2], 0.0);
        assert_eq!(y[6], 11.0);
        // The exact erf GELU of 1 is 0.8413; the tanh form 0.8412; f16 rounding keeps 3 decimals.
        assert!((y[4] - 0.8412).abs() < 1e-3, "{y:?}");
        assert!((y[1] + 0.1588).abs() < 1e-3, "{y:?}");
        // Values are f16-representable.
        assert!(y.iter().all(|&v| f16::from_f32(v).to_f32() == v || v.abs() >= 10.0));
    }
}
