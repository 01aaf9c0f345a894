//! Prompt processing as a blocked GEMM (AVX-512 VNNI): several tokens per weight load, as llama.cpp's
//! repacked `Q4_0x8` / `Q4_Kx8` paths do, but without a repacked copy of the weights.
//!
//! The activations of a layer input are laid out once per Q8 format in panels of 16 rows: for every 4
//! columns, the 16 rows' 4 bytes side by side (64 bytes, one zmm register), biased to unsigned (`a + 128`).
//! One `vpdpbusd` with 4 weight bytes broadcast then gives one weight row's partial dot products with 16
//! tokens, with no horizontal sums. The weights are the signed operand; the bias adds `128 · Σw` per
//! block, which is subtracted exactly (in the integer) using each block's weight sum. (The kernels that follow
//! llama.cpp's repacked Q4_K/Q2_K and `vec_dot` orders take them the other way round: unsigned weights, the
//! activations signed.)
//!
//! Each task unpacks a slice of weight rows once (`PackedRows`: signed bytes, scales, sums) and runs
//! every activation panel against it, so the unpacking is paid once per `16 × panels` dot products.
//! Every integer is the one llama.cpp's dot products compute, and every float is combined as the kernel llama.cpp
//! takes for the type: Q8_0 and Q5_0 keep each block's 8 groups of 4 apart (tinyBLAS); Q4_0, IQ4_NL one integer per
//! block (its repacked GEMMs); Q4_K and Q2_K one per 64 or 128 values with the minimums apart, or one per
//! super-block for the last `rows % 4` rows (its repacked GEMMs and GEMVs); Q3_K, Q5_K and Q6_K one per
//! super-block, or `vec_dot`'s 8 lanes under 8 rows. Which rows a batch of llama.cpp's would hold comes from the
//! pass's place in the prompt (`PromptRows`).

use rayon::prelude::*;

use super::act::{LayerInput, QuantizedActs};
use super::avx512_gemm as k;
use super::dispatch::Isa;
use super::matrix::{SharedOut, WeightMatrix};
use super::pool::PromptRows;
use super::types::{ActFormat, WeightType, QK, QK_K};

/// Activation rows per panel (zmm lanes).
pub const LANES: usize = 16;
/// Weight rows each task unpacks and runs against every panel.
const TASK_ROWS: usize = 32;
/// Fewer activation rows than this take llama.cpp's `vec_dot` rounding for Q3_K, Q5_K and Q6_K (as its outputs show).
const VEC_DOT_BELOW: usize = 8;
/// Fewer activation rows than this go through the row kernels outside a prompt pass (the GEMM's lanes would
/// mostly idle).
const MIN_ROWS: usize = 8;

thread_local! {
    /// Set while this thread runs a prompt's forward pass (`forward_pass`).
    static PROMPT: std::cell::Cell<Option<PromptRows>> = const { std::cell::Cell::new(None) };
}

/// Run `f`, a forward pass over prompt tokens (`prompt`) or one generated token: in a prompt pass every quantized
/// product takes the GEMM, however few its rows; in a decoding pass, the row kernels.
///
/// The GEMM and the row kernels round differently (llama.cpp's batched and token-by-token paths differ too), so if
/// the choice followed the row count, a prompt token's logits would depend on how much of the prompt was already
/// cached. With the choice made per pass, and the row-count-dependent roundings placed by the token's position in
/// the prompt (`PromptRows`), a prompt gives the same logits whether evaluated whole or in chunks. Every pass sets
/// the flag (and restores it), since a worker waiting inside one pass may run another instance's whole pass.
pub fn forward_pass<R>(prompt: Option<PromptRows>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<PromptRows>);
    impl Drop for Restore {
        fn drop(&mut self) {
            PROMPT.set(self.0);
        }
    }
    let _restore = Restore(PROMPT.replace(prompt));
    f()
}

/// Whether a `ty` matrix times `m` activation rows should use the blocked GEMM on `isa`. Not for Q4_1 and Q5_1:
/// llama.cpp has no GEMM for them on x86 and runs prompts through the 8-lane dot products, which the row
/// kernels sum in the same order, so a prompt's logits are llama.cpp's to the last bit.
pub fn worth_it(isa: Isa, ty: WeightType, m: usize) -> bool {
    isa == Isa::Avx512
        && (m >= MIN_ROWS || PROMPT.get().is_some())
        && !matches!(ty, WeightType::F32 | WeightType::F16 | WeightType::BF16 | WeightType::Q4_1 | WeightType::Q5_1)
}

/// A layer input in panels of 16 rows (rows past the end are zeros).
#[derive(Debug)]
pub struct ActPanels {
    /// Panels.
    pub groups: usize,
    /// Real activation rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Per panel: `cols / 4` runs of 16 rows × 4 biased bytes.
    pub q: Vec<u8>,
    /// Q8_K: the same bytes unbiased (signed), for the kernels that take the weights as the unsigned operand.
    pub signed: Vec<i8>,
    /// Per panel and block: 16 rows' scales.
    pub d: Vec<f32>,
    /// Q8_1: per panel and block, 16 rows' `d·Σq`.
    pub s: Vec<f32>,
    /// Q8_K: per panel, super-block and pair of 16-sums: 16 rows × 2 sums (i16), for the minimums per 16.
    pub bsum: Vec<i16>,
    /// Q8_K: the same for pairs of 32-sums (the minimums per 32 of Q4_K and Q5_K).
    pub bsum32: Vec<i16>,
}

impl ActPanels {
    /// Lay out `q` in panels.
    pub fn build(q: &QuantizedActs) -> Self {
        let (m, k) = (q.rows, q.cols);
        let groups = m.div_ceil(LANES);
        let nb = k / q.block();
        let mut p = ActPanels {
            groups,
            rows: m,
            cols: k,
            q: vec![0x80; groups * k * LANES],
            signed: if q.format == ActFormat::Q8_K { vec![0; groups * k * LANES] } else { Vec::new() },
            d: vec![0.0; groups * nb * LANES],
            s: if q.s.is_empty() { Vec::new() } else { vec![0.0; groups * nb * LANES] },
            bsum: if q.format == ActFormat::Q8_K { vec![0; groups * nb * 8 * 2 * LANES] } else { Vec::new() },
            bsum32: if q.format == ActFormat::Q8_K { vec![0; groups * nb * 4 * 2 * LANES] } else { Vec::new() },
        };
        for row in 0..m {
            let (g, l) = (row / LANES, row % LANES);
            let a = q.row(row);
            let panel = &mut p.q[g * k * LANES..(g + 1) * k * LANES];
            for (k4, bytes) in a.qs.chunks_exact(4).enumerate() {
                for (j, &v) in bytes.iter().enumerate() {
                    panel[k4 * 4 * LANES + l * 4 + j] = (v as u8) ^ 0x80;
                }
            }
            if !p.signed.is_empty() {
                let panel = &mut p.signed[g * k * LANES..(g + 1) * k * LANES];
                for (k4, bytes) in a.qs.chunks_exact(4).enumerate() {
                    panel[k4 * 4 * LANES + l * 4..][..4].copy_from_slice(bytes);
                }
            }
            for b in 0..nb {
                p.d[(g * nb + b) * LANES + l] = a.d[b];
                if !p.s.is_empty() {
                    p.s[(g * nb + b) * LANES + l] = a.s[b];
                }
                if !p.bsum.is_empty() {
                    // Sums of 16 or 32 bytes of ±127 fit an i16.
                    let sums = &a.sums[b * 16..(b + 1) * 16];
                    for pair in 0..8 {
                        let at = ((g * nb + b) * 8 + pair) * 2 * LANES + l * 2;
                        p.bsum[at] = sums[2 * pair] as i16;
                        p.bsum[at + 1] = sums[2 * pair + 1] as i16;
                    }
                    for pair in 0..4 {
                        let at = ((g * nb + b) * 4 + pair) * 2 * LANES + l * 2;
                        p.bsum32[at] = (sums[4 * pair] + sums[4 * pair + 1]) as i16;
                        p.bsum32[at + 1] = (sums[4 * pair + 2] + sums[4 * pair + 3]) as i16;
                    }
                }
            }
        }
        p
    }
}

/// A task's weight rows, unpacked: signed bytes in element order plus per-block numbers.
#[derive(Default)]
pub struct PackedRows {
    /// Rows held.
    pub rows: usize,
    /// Q4_K and Q2_K in a matrix of a multiple of 8 rows, which llama.cpp repacks for its GEMM: held and summed as
    /// that GEMM sums them (`avx512_gemm::tile_kquant_repacked`, which needs no bias correction).
    pub repacked: bool,
    /// Q4_K and Q2_K: the first activation row that llama.cpp's GEMV computes (the last `rows % 4` of its batch).
    pub gemv_from: usize,
    /// Q3_K, Q5_K, Q6_K times fewer than 8 activation rows: held and summed as llama.cpp's `vec_dot` sums them
    /// (8 integer lanes per super-block), which it takes for so few rows instead of its batched rounding.
    pub vec_dot_lanes: bool,
    /// Elements per row.
    pub cols: usize,
    /// Blocks (32) or super-blocks (256) per row.
    pub nb: usize,
    /// `rows × cols` signed values.
    pub q: Vec<i8>,
    /// Per row and block: the scale (`d`).
    pub d: Vec<f32>,
    /// Per row and block: Q4_1/Q5_1's minimum, the K-quants' `dmin`.
    pub m: Vec<f32>,
    /// Per row and block: `−128 · Σ scale · Σw`, which cancels the activations' bias.
    pub corr: Vec<i32>,
    /// Q8_0 and Q5_0, per row and block: for each group of 4 values (8 per block), the start of its
    /// `vpdpbusd`: the same correction for the group, plus the bits that make the sum a float (`MAGIC_BITS`).
    pub corr4: Vec<i32>,
    /// K-quants, per row and super-block: the 16 sub-block scales.
    pub sc: Vec<i32>,
    /// K-quants with minimums, per row and super-block: pairs of i16 minimums (for `vpdpwssd` with the pairs of
    /// activation sums): 8 pairs of the minimums per 16, or 4 of those per 32.
    pub mins: Vec<i32>,
}

impl PackedRows {
    fn reset(&mut self, rows: usize, cols: usize, block: usize) {
        self.rows = rows;
        self.cols = cols;
        self.nb = cols / block;
        let blocks = rows * self.nb;
        self.q.resize(rows * cols, 0);
        self.d.resize(blocks, 0.0);
        self.m.resize(blocks, 0.0);
        self.corr.resize(blocks, 0);
        if block == QK {
            self.corr4.resize(blocks * 8, 0);
        }
        if block == QK_K {
            self.sc.resize(blocks * 16, 0);
            self.mins.resize(blocks * 8, 0);
        }
    }
}

/// `y = x · Wᵀ` with the blocked GEMM. The caller checked `worth_it` with an `isa` the CPU has.
pub fn gemm(w: &WeightMatrix, x: &LayerInput, y: &mut [f32]) {
    let ty = w.weight_type();
    let format = ty.act_format();
    let panels = x.panels[LayerInput::slot(format)].get_or_init(|| ActPanels::build(x.quantized(format)));
    let (n, cols) = (w.rows(), w.cols());
    assert_eq!(panels.cols, cols, "activation width");
    let out = SharedOut(y.as_mut_ptr());
    let block = if format == ActFormat::Q8_K { QK_K } else { QK };
    // The rows as llama.cpp's batch would hold them: this pass's place in the prompt for the layers' products, the
    // product's own rows for the rest (the output head of a prompt pass takes only its last row, as llama.cpp's).
    let (first, total) = match PROMPT.get() {
        Some(p) if p.chunk == panels.rows => (p.first, p.total),
        _ => (0, panels.rows),
    };
    (0..n.div_ceil(TASK_ROWS)).into_par_iter().for_each_init(PackedRows::default, |packed, task| {
        let rows = task * TASK_ROWS..n.min((task + 1) * TASK_ROWS);
        packed.reset(rows.len(), cols, block);
        packed.repacked = n.is_multiple_of(8) && matches!(ty, WeightType::Q4_K | WeightType::Q2_K);
        packed.vec_dot_lanes =
            total < VEC_DOT_BELOW && matches!(ty, WeightType::Q3_K | WeightType::Q5_K | WeightType::Q6_K);
        packed.gemv_from = (total - total % 4).saturating_sub(first);
        let src: Vec<&[u8]> = rows.clone().map(|r| w.row_bytes(r)).collect();
        // SAFETY: `worth_it` checked the CPU's AVX-512 VNNI; the rows hold `cols` values of `ty`.
        unsafe { k::pack(ty, &src, packed) };
        let mut tile: k::Tile = [[0f32; k::TILE_PANELS * LANES]; k::TILE_ROWS];
        // The results of a tile's panels, by activation row: written out as runs of this task's rows, not element
        // by element down the columns of `y`.
        let mut block = [[0f32; TASK_ROWS]; k::TILE_PANELS * LANES];
        for g in (0..panels.groups).step_by(k::TILE_PANELS) {
            let count_panels = (panels.groups - g).min(k::TILE_PANELS);
            let valid = (panels.rows - g * LANES).min(count_panels * LANES);
            for r0 in (0..rows.len()).step_by(k::TILE_ROWS) {
                let count = (rows.len() - r0).min(k::TILE_ROWS);
                // SAFETY: as above; `r0 + count` rows are packed and panels `g..g + count_panels` exist.
                unsafe { k::tile(ty, packed, r0, count, panels, g, count_panels, &mut tile) };
                for (t, lanes) in tile[..count].iter().enumerate() {
                    for (l, &v) in lanes[..count_panels * LANES].iter().enumerate() {
                        block[l][r0 + t] = v;
                    }
                }
            }
            for (l, results) in block[..valid].iter().enumerate() {
                let at = (g * LANES + l) * n + rows.start;
                // SAFETY: weight rows are partitioned between tasks; the run is inside `y`.
                unsafe { out.write_run(at, &results[..rows.len()]) };
            }
        }
    });
}
