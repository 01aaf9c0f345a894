//! Compute kernels on raw buffers, one file per instruction set and weight family, as candle's `quantized/`
//! and llama.cpp's `ggml-cpu` are laid out.
//!
//! - Quantized and float matrix products with llama.cpp's numerics, for every weight type (`types`) of a GGUF
//!   file: `matrix::WeightMatrix` runs a matrix in place, as stored; a layer input (`act::LayerInput`) is
//!   converted once per activation format (Q8_0, Q8_1, Q8_K, f16, bf16, as llama.cpp's x86 build converts
//!   it) and read by every matrix of that format. Per instruction set, chosen at run time (`dispatch`):
//!   `scalar` (the reference; `blocks` decodes the block layouts), `avx2_q32` / `avx2_kquant` /
//!   `avx2_float` (one weight row against a few activation rows, in AVX2, AVX-VNNI or AVX-512 VNNI
//!   flavours), for prompts the AVX-512 VNNI blocked GEMM (`panel`, `avx512_gemm`), and BF16 with AVX-512 BF16
//!   (`avx512_bf16`).
//! - `f16_attention`: causal attention over the f16 KV cache, at llama.cpp's precision.
//! - Dense f32 kernels for the embedding encoder: `f32_matmul` (gemm and a short-batch kernel),
//!   `f32_attention`, `f32_ops` (layer norm, activations), over the reductions in `f32_simd`; `f32_avx512`
//!   (projections and short-sequence attention) where the CPU has AVX-512F, detected at run time.
//! - `run_pass` (`pool`): a whole forward pass on rayon's workers (kept awake between a decoding pass's loops),
//!   with the kernels its kind takes.

pub mod act;
#[cfg(target_arch = "x86_64")]
mod avx2_common;
#[cfg(target_arch = "x86_64")]
mod avx2_float;
#[cfg(target_arch = "x86_64")]
mod avx2_kquant;
#[cfg(target_arch = "x86_64")]
mod avx2_q32;
#[cfg(target_arch = "x86_64")]
mod avx512_bf16;
#[cfg(target_arch = "x86_64")]
mod avx512_gemm;
pub mod blocks;
pub mod dispatch;
pub mod f16_attention;
pub(crate) mod f32_attention;
#[cfg(target_arch = "x86_64")]
pub(crate) mod f32_avx512;
pub(crate) mod f32_matmul;
pub(crate) mod f32_ops;
mod f32_simd;
pub mod ggml_rows;
#[cfg(test)]
mod kernel_tests;
pub mod matrix;
#[cfg(target_arch = "x86_64")]
mod panel;
mod pool;
pub mod scalar;
pub mod types;
#[cfg(test)]
mod vector_tests;

pub use pool::{run_pass, Pass, PromptRows};
