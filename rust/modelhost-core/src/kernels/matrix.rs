//! A weight matrix of any type, used in place (from the file's mapping, as stored), and its product with
//! a layer input: row-parallel dot products for decoding, a blocked GEMM for prompts.

use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use super::act::{ActRow, LayerInput};
use super::blocks::dequantize_row;
use super::dispatch::{Isa, RowKernel};
use super::types::{ActFormat, WeightType};
use crate::storage::MappedFile;

/// Weight rows per rayon task of the row-parallel path. Rayon, not a spinning barrier pool: a barrier
/// pool collapses when another process takes a core (its workers spin while the thread holding the
/// work is descheduled); rayon's loops are work-stealing.
const ROWS_PER_TASK: usize = 32;
/// Activation rows multiplied per weight-row load in the row-parallel path.
const ACT_TILE: usize = 4;

/// Where a matrix's bytes live.
enum Storage {
    Owned(Vec<u8>),
    /// In place in the file's mapping, which this keeps alive: no copy at load, and the pages are the
    /// page cache's. The kernels read blocks with unaligned loads, so any offset will do.
    Mapped(Arc<MappedFile>, Range<usize>),
}

/// A `rows × cols` weight matrix in ggml's layout (each row a run of blocks).
pub struct WeightMatrix {
    ty: WeightType,
    storage: Storage,
    rows: usize,
    cols: usize,
    row_bytes: usize,
}

impl std::fmt::Debug for WeightMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightMatrix({} {}x{}, mapped: {})", self.ty.name(), self.rows, self.cols, self.is_mapped())
    }
}

impl WeightMatrix {
    fn check(ty: WeightType, len: usize, rows: usize, cols: usize) -> Option<usize> {
        let row_bytes = ty.row_bytes(cols)?;
        (rows > 0 && row_bytes.checked_mul(rows)? == len).then_some(row_bytes)
    }

    /// Copy a tensor's bytes (ggml dims `[cols, rows]`); `None` if the sizes disagree.
    pub fn new(ty: WeightType, data: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let row_bytes = Self::check(ty, data.len(), rows, cols)?;
        Some(WeightMatrix { ty, storage: Storage::Owned(data.to_vec()), rows, cols, row_bytes })
    }

    /// Use the tensor at `range` of a mapped file in place; `None` if the sizes disagree.
    pub fn mapped(
        ty: WeightType,
        file: Arc<MappedFile>,
        range: Range<usize>,
        rows: usize,
        cols: usize,
    ) -> Option<Self> {
        file.bytes().get(range.clone())?;
        let row_bytes = Self::check(ty, range.len(), rows, cols)?;
        Some(WeightMatrix { ty, storage: Storage::Mapped(file, range), rows, cols, row_bytes })
    }

    /// The element type.
    pub fn weight_type(&self) -> WeightType {
        self.ty
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Whether the bytes are read in place from a file mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped(..))
    }

    /// All the stored bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Owned(v) => v,
            Storage::Mapped(file, range) => &file.bytes()[range.clone()],
        }
    }

    /// The stored bytes of row `r`.
    pub fn row_bytes(&self, r: usize) -> &[u8] {
        &self.bytes()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Row `r` as f32, with llama.cpp's dequantization (an embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize_row(self.ty, self.row_bytes(r), out);
    }

    /// `x · Wᵀ`: `(x.rows(), self.rows())`, row-major.
    pub fn matmul(&self, x: &LayerInput) -> Vec<f32> {
        let mut y = vec![0f32; x.rows() * self.rows];
        self.matmul_into(x, &mut y);
        y
    }

    /// `x · Wᵀ` into `y` (`x.rows() × self.rows()`), with this CPU's kernels.
    pub fn matmul_into(&self, x: &LayerInput, y: &mut [f32]) {
        self.matmul_with(Isa::get(), x, y);
    }

    /// `x · Wᵀ` with the kernels of `isa` (tests compare the levels).
    pub fn matmul_with(&self, isa: Isa, x: &LayerInput, y: &mut [f32]) {
        assert_eq!(x.cols(), self.cols, "activation width");
        assert_eq!(y.len(), x.rows() * self.rows, "output size");
        let format = self.ty.act_format();
        #[cfg(target_arch = "x86_64")]
        if super::panel::worth_it(isa, self.ty, x.rows()) {
            return super::panel::gemm(self, x, y);
        }
        let out = SharedOut(y.as_mut_ptr());
        let m = x.rows();
        #[cfg(target_arch = "x86_64")]
        if self.ty == WeightType::BF16
            && isa == Isa::Avx512
            && self.cols.is_multiple_of(32)
            && super::avx512_bf16::available()
        {
            // llama.cpp's own instruction, in its order for one activation row or several.
            use super::avx512_bf16 as bf;
            let acts = x.floats(format);
            let act = |i: usize| &acts[i * self.cols..(i + 1) * self.cols];
            let dot = |r: usize, i0: usize, tile: usize, o: &mut [f32]| {
                let w = self.row_bytes(r);
                // SAFETY: `available` checked the CPU; the row holds `cols` bf16 values, `cols` a multiple of 32.
                unsafe {
                    match tile {
                        _ if m == 1 => o[0] = bf::dot(w, act(i0), true),
                        4 => bf::dot_rows::<4>(w, &[act(i0), act(i0 + 1), act(i0 + 2), act(i0 + 3)], o),
                        _ => (0..tile).for_each(|t| o[t] = bf::dot(w, act(i0 + t), false)),
                    }
                }
            };
            return self.par_rows(m, dot, &out);
        }
        let kernel = RowKernel::new(self.ty, isa);
        match format {
            ActFormat::F32 | ActFormat::F16 | ActFormat::BF16 => {
                let acts = x.floats(format);
                let rows: Vec<&[f32]> = acts.chunks_exact(self.cols).collect();
                self.par_rows(m, |r, i0, tile, o| kernel.float(self.row_bytes(r), &rows[i0..i0 + tile], o), &out);
            }
            ActFormat::Q8_0 | ActFormat::Q8_1 | ActFormat::Q8_K => {
                let q = x.quantized(format);
                let rows: Vec<ActRow<'_>> = (0..m).map(|i| q.row(i)).collect();
                self.par_rows(m, |r, i0, tile, o| kernel.quant(self.row_bytes(r), &rows[i0..i0 + tile], o), &out);
            }
        }
    }

    /// Split the weight rows over rayon's workers; each task runs `dot(row, first activation row, count,
    /// out)` for its rows against every activation row, ACT_TILE at a time.
    fn par_rows(&self, m: usize, dot: impl Fn(usize, usize, usize, &mut [f32]) + Sync, out: &SharedOut) {
        let n = self.rows;
        (0..n.div_ceil(ROWS_PER_TASK)).into_par_iter().for_each(|task| {
            let rows = task * ROWS_PER_TASK..n.min((task + 1) * ROWS_PER_TASK);
            let mut tmp = [0f32; ACT_TILE];
            for i0 in (0..m).step_by(ACT_TILE) {
                let tile = (m - i0).min(ACT_TILE);
                for r in rows.clone() {
                    dot(r, i0, tile, &mut tmp[..tile]);
                    for (t, v) in tmp[..tile].iter().enumerate() {
                        // SAFETY: each (activation row, weight row) element is written by exactly one task
                        // (the weight rows are partitioned), and the index is inside `y`.
                        unsafe { out.write((i0 + t) * n + r, *v) };
                    }
                }
            }
        });
    }
}

/// The output buffer, written by several tasks at disjoint indices.
pub(super) struct SharedOut(pub(super) *mut f32);
// SAFETY: the tasks write disjoint elements (see `par_rows`), and the buffer outlives them.
unsafe impl Sync for SharedOut {}
impl SharedOut {
    /// # Safety
    /// `i` is in bounds and no other thread touches element `i` concurrently.
    #[inline(always)]
    pub(super) unsafe fn write(&self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }

    /// # Safety
    /// `at..at + values.len()` is in bounds and no other thread touches it concurrently.
    #[inline(always)]
    pub(super) unsafe fn write_run(&self, at: usize, values: &[f32]) {
        std::ptr::copy_nonoverlapping(values.as_ptr(), self.0.add(at), values.len());
    }
}
