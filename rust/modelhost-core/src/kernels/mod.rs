//! Compute kernels on raw buffers, one file per instruction set and weight family, as candle's `quantized/`
//! and llama.cpp's `ggml-cpu` are laid out.
//!
//! - Quantized matrix products (`QuantMatrix`, here) for the weight types candle runs slowly on the CPU (its
//!   Q4_1 dot product is scalar), done as ggml does them: activations quantized to 8 bits per 32-block,
//!   integer dot products (`scalar`, `avx2`, and `vnni` where the CPU has it), f32 accumulation, rows split
//!   over rayon's workers.
//! - Dense f32 kernels for the embedding encoder: `f32_matmul` (gemm and a short-batch kernel),
//!   `f32_attention`, `f32_ops` (layer norm, activations), over the reductions in `f32_simd`; `f32_avx512`
//!   (projections and short-sequence attention) where the CPU has AVX-512F, detected at run time.
//! - `on_pool` (`pool`): a whole forward pass on rayon's workers, kept awake between its loops.

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod avx2;
pub(crate) mod f32_attention;
#[cfg(target_arch = "x86_64")]
mod f32_avx512;
pub(crate) mod f32_matmul;
pub(crate) mod f32_ops;
mod f32_simd;
mod pool;
mod scalar;
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod vnni;

use std::ops::Range;
use std::sync::Arc;

use half::f16;

use crate::storage::MappedFile;

pub use pool::on_pool;

/// Elements per quantization block.
pub const BLOCK: usize = 32;
/// Activation rows multiplied per weight-block load (register blocking).
const ROW_TILE: usize = 4;
/// Weight rows per rayon task. Rayon, not candle's spinning barrier pool: a barrier pool collapses when
/// another process takes a core, because its workers spin at the barrier while the thread holding the work
/// is descheduled; rayon's loops are work-stealing (`benches/results/profile.md` has the measurements).
const ROWS_PER_TASK: usize = 32;

/// Weight block formats this module runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantKind {
    /// f16 scale, f16 minimum, 16 bytes of nibbles (20 bytes per 32 weights).
    Q4_1,
    /// f16 scale, 32 signed bytes (34 bytes per 32 weights).
    Q8_0,
}

impl QuantKind {
    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            QuantKind::Q4_1 => 20,
            QuantKind::Q8_0 => 34,
        }
    }
}

/// One block of activations quantized to 8 bits: ggml's `block_q8_1` (`s` unused for Q8_0).
#[derive(Clone, Copy)]
#[repr(C)]
struct BlockQ8 {
    d: f32,
    s: f32,
    qs: [i8; BLOCK],
}

/// Where a matrix's blocks live.
enum Blocks {
    Owned(Vec<u8>),
    /// In place in the file's mapping, which this keeps alive: no copy at load, and the pages are the
    /// page cache's. The kernels read blocks with unaligned loads, so any offset will do.
    Mapped(Arc<MappedFile>, Range<usize>),
}

/// A quantized weight matrix of `rows × cols` in ggml's block layout.
pub struct QuantMatrix {
    kind: QuantKind,
    blocks: Blocks,
    rows: usize,
    cols: usize,
}

impl QuantMatrix {
    /// Copy the raw bytes of a GGUF tensor with ggml dims `[cols, rows]`; `None` if the sizes disagree.
    pub fn new(kind: QuantKind, data: &[u8], rows: usize, cols: usize) -> Option<Self> {
        Self::check_size(kind, data.len(), rows, cols)?;
        Some(QuantMatrix { kind, blocks: Blocks::Owned(data.to_vec()), rows, cols })
    }

    /// Use the tensor at `range` of a mapped file in place; `None` if the sizes disagree.
    pub fn mapped(
        kind: QuantKind,
        file: Arc<MappedFile>,
        range: Range<usize>,
        rows: usize,
        cols: usize,
    ) -> Option<Self> {
        file.bytes().get(range.clone())?;
        Self::check_size(kind, range.len(), rows, cols)?;
        Some(QuantMatrix { kind, blocks: Blocks::Mapped(file, range), rows, cols })
    }

    fn check_size(kind: QuantKind, len: usize, rows: usize, cols: usize) -> Option<()> {
        let expected = rows.checked_mul(cols / BLOCK)?.checked_mul(kind.block_bytes())?;
        (cols.is_multiple_of(BLOCK) && len == expected).then_some(())
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Whether the blocks are read in place from a file mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self.blocks, Blocks::Mapped(..))
    }

    /// All the raw blocks.
    pub fn bytes(&self) -> &[u8] {
        match &self.blocks {
            Blocks::Owned(v) => v,
            Blocks::Mapped(file, range) => &file.bytes()[range.clone()],
        }
    }

    /// The raw blocks of row `r`.
    pub fn row_bytes(&self, r: usize) -> &[u8] {
        let len = self.cols / BLOCK * self.kind.block_bytes();
        &self.bytes()[r * len..(r + 1) * len]
    }

    /// `x` is `(m, cols)` row-major; returns `(m, rows)` = x · Wᵀ.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_with(InstructionSet::detect(), x, m)
    }

    fn matmul_with(&self, isa: InstructionSet, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "activation size");
        let nb = self.cols / BLOCK;
        let acts: Vec<BlockQ8> = x.chunks_exact(BLOCK).map(quantize_q8).collect();
        let mut y = vec![0f32; m * self.rows];
        let (n, y_ptr) = (self.rows, y.as_mut_ptr() as usize);
        let (row_len, data) = (nb * self.kind.block_bytes(), self.bytes());
        let work = |rows: Range<usize>| {
            let w = &data[rows.start * row_len..rows.end * row_len];
            let mut out = [0f32; ROWS_PER_TASK * ROW_TILE];
            // The task's weight rows against ROW_TILE activation rows at a time: the rows stay in L1.
            for i0 in (0..m).step_by(ROW_TILE) {
                let tile = (m - i0).min(ROW_TILE);
                let a: [&[BlockQ8]; ROW_TILE] = std::array::from_fn(|t| &acts[(i0 + t.min(tile - 1)) * nb..][..nb]);
                let out = &mut out[..rows.len() * tile];
                isa.run(self.kind, w, row_len, &a[..tile], out);
                for (r, v) in rows.clone().zip(out.chunks_exact(tile)) {
                    for (t, v) in v.iter().enumerate() {
                        // SAFETY: every (activation row, weight row) element is written by exactly one
                        // work item (rows are partitioned), and the index is inside `y`.
                        unsafe { *(y_ptr as *mut f32).add((i0 + t) * n + r) = *v };
                    }
                }
            }
        };
        use rayon::prelude::*;
        (0..n.div_ceil(ROWS_PER_TASK))
            .into_par_iter()
            .for_each(|c| work(c * ROWS_PER_TASK..n.min((c + 1) * ROWS_PER_TASK)));
        y
    }
}

/// The instruction set the quantized dot products run on: AVX2/FMA is chosen at compile time, AVX-VNNI on top
/// of it at run time, once per process.
#[derive(Debug, Clone, Copy)]
enum InstructionSet {
    /// The portable path, for builds without AVX2/FMA (and the tests' reference).
    #[cfg_attr(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"), allow(dead_code))]
    Scalar,
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    Avx2,
    /// AVX-VNNI's `vpdpbusd` does the u8 × i8 multiply-add in one instruction where AVX2 needs two.
    /// Picked at run time so the wheel keeps its x86-64-v3 baseline.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    AvxVnni,
}

impl InstructionSet {
    fn detect() -> Self {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        {
            // Decided once per process (this runs for every matmul). MODELHOST_NO_VNNI=1 forces the AVX2
            // kernels, for comparisons.
            static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            let vnni = *VNNI
                .get_or_init(|| std::env::var_os("MODELHOST_NO_VNNI").is_none() && is_x86_feature_detected!("avxvnni"));
            if vnni {
                InstructionSet::AvxVnni
            } else {
                InstructionSet::Avx2
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
        InstructionSet::Scalar
    }

    /// Dot products of the `kind` weight rows in `w` (each `row_len` bytes) with `a.len()` (1..=ROW_TILE)
    /// activation rows, into `out` as `[row][activation]`.
    fn run(self, kind: QuantKind, w: &[u8], row_len: usize, a: &[&[BlockQ8]], out: &mut [f32]) {
        debug_assert_eq!(out.len(), w.len() / row_len * a.len());
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        macro_rules! tiles {
            ($isa:ident :: $f:ident) => {
                // SAFETY: the CPU features were checked (at compile time for AVX2/FMA, by `detect` for
                // VNNI); each row of `w` holds as many blocks as each activation row.
                unsafe {
                    match a.len() {
                        1 => $isa::$f::<1>(w, row_len, a.try_into().unwrap(), out),
                        2 => $isa::$f::<2>(w, row_len, a.try_into().unwrap(), out),
                        3 => $isa::$f::<3>(w, row_len, a.try_into().unwrap(), out),
                        _ => $isa::$f::<4>(w, row_len, a.try_into().unwrap(), out),
                    }
                }
            };
        }
        match (self, kind) {
            (InstructionSet::Scalar, kind) => {
                for (w, out) in w.chunks_exact(row_len).zip(out.chunks_exact_mut(a.len())) {
                    for (o, a) in out.iter_mut().zip(a) {
                        *o = scalar::dot_scalar(kind, w, a);
                    }
                }
            }
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
            (InstructionSet::Avx2, QuantKind::Q4_1) => tiles!(avx2::q4_1_avx2),
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
            (InstructionSet::Avx2, QuantKind::Q8_0) => tiles!(avx2::q8_0_avx2),
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
            (InstructionSet::AvxVnni, QuantKind::Q4_1) => tiles!(vnni::q4_1_vnni),
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
            (InstructionSet::AvxVnni, QuantKind::Q8_0) => tiles!(vnni::q8_0_vnni),
        }
    }
}

/// ggml's `quantize_row_q8_1` for one block (both scales rounded through f16, as ggml stores them).
fn quantize_q8(x: &[f32]) -> BlockQ8 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; BLOCK];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8; // ggml's AVX2 path rounds to nearest even
        sum += i32::from(*q);
    }
    BlockQ8 { d: f16::from_f32(d).to_f32(), s: f16::from_f32(sum as f32 * d).to_f32(), qs }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul};
    use candle_core::{Device, Module, Tensor};

    fn random_blocks(kind: QuantKind, blocks: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let mut out = Vec::new();
        for _ in 0..blocks {
            out.extend(f16::from_f32((next() % 1000) as f32 / 20000.0).to_le_bytes());
            if kind == QuantKind::Q4_1 {
                out.extend(f16::from_f32(-((next() % 1000) as f32) / 10000.0).to_le_bytes());
                out.extend((0..16).map(|_| next() as u8));
            } else {
                out.extend((0..32).map(|_| next() as u8));
            }
        }
        out
    }

    #[test]
    fn matches_candle_and_the_scalar_reference() {
        for (kind, dtype) in [(QuantKind::Q4_1, GgmlDType::Q4_1), (QuantKind::Q8_0, GgmlDType::Q8_0)] {
            let (rows, cols) = (203, 96);
            let data = random_blocks(kind, rows * cols / BLOCK, 7);
            let w = QuantMatrix::new(kind, &data, rows, cols).unwrap();
            let q = QMatMul::from_qtensor(qtensor_from_ggml(dtype, &data, vec![rows, cols], &Device::Cpu).unwrap());
            let q = q.unwrap();
            let mut kernels = vec![InstructionSet::Scalar];
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
            {
                kernels.push(InstructionSet::Avx2);
                if is_x86_feature_detected!("avxvnni") {
                    kernels.push(InstructionSet::AvxVnni);
                }
            }
            for (dot, m) in kernels.into_iter().flat_map(|k| [1, 2, 3, 4, 9].map(|m| (k, m))) {
                let x: Vec<f32> = (0..m * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
                let ours = w.matmul_with(dot, &x, m);
                let xt = Tensor::from_vec(x.clone(), (m, cols), &Device::Cpu).unwrap();
                let theirs: Vec<f32> = q.forward(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                for (a, b) in ours.iter().zip(&theirs) {
                    assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{kind:?} {dot:?} m={m}: {a} vs {b}");
                }
                let acts: Vec<BlockQ8> = x.chunks_exact(BLOCK).map(quantize_q8).collect();
                let reference = scalar::dot_scalar(kind, w.row_bytes(5), &acts[..cols / BLOCK]);
                assert!((reference - ours[5]).abs() < 1e-3 * reference.abs().max(1.0));
            }
        }
    }

    #[test]
    fn refuses_wrong_sizes() {
        assert!(QuantMatrix::new(QuantKind::Q4_1, &[0; 20], 1, 33).is_none());
        assert!(QuantMatrix::new(QuantKind::Q4_1, &[0; 21], 1, 32).is_none());
        assert!(QuantMatrix::new(QuantKind::Q8_0, &[0; 34], 1, 32).is_some());
    }
}
