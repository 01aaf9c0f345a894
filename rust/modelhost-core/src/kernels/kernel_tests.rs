//! Every weight type on every instruction set this CPU has, against the portable reference (which is
//! itself checked against a plain f32 product of the dequantized weights).

use proptest::prelude::*;

use super::act::{ActRow, LayerInput};
use super::blocks::{block32, dequantize_row, super_block};
use super::dispatch::Isa;
use super::ggml_rows::reduce8;
use super::matrix::WeightMatrix;
use super::types::{ActFormat, WeightType};

/// Deterministic pseudo-random bytes.
pub(crate) fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

/// A row of random blocks with small, finite f16 scales where the format keeps them.
pub(crate) fn random_row(ty: WeightType, cols: usize, seed: u64) -> Vec<u8> {
    use half::{bf16, f16};
    let floats: Vec<f32> = random_bytes(cols, seed).iter().map(|&b| (f32::from(b) - 128.0) / 64.0).collect();
    match ty {
        WeightType::F32 => return floats.iter().flat_map(|v| v.to_le_bytes()).collect(),
        WeightType::F16 => return floats.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
        WeightType::BF16 => return floats.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
        _ => {}
    }
    let mut row = random_bytes(ty.row_bytes(cols).unwrap(), seed ^ 0x55);
    let scale_at: &[usize] = match ty {
        WeightType::Q4_0 | WeightType::Q5_0 | WeightType::Q8_0 | WeightType::IQ4_NL => &[0],
        WeightType::Q4_1 | WeightType::Q5_1 | WeightType::Q4_K | WeightType::Q5_K => &[0, 2],
        WeightType::Q2_K => &[80, 82],
        WeightType::Q3_K => &[108],
        WeightType::Q6_K => &[208],
        _ => unreachable!(),
    };
    let mut k = seed;
    for block in row.chunks_exact_mut(ty.block_bytes()) {
        for &at in scale_at {
            k = k.wrapping_mul(2862933555777941757).wrapping_add(3037000493);
            let v = ((k >> 40) % 997) as f32 / 40000.0 + 1e-4;
            let v = if (k >> 20) & 1 == 1 && at == 2 { -v } else { v };
            block[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
    }
    row
}

/// Activations with a spread of magnitudes, signs, an all-zero block and exact ties.
fn activations(m: usize, cols: usize, seed: u64) -> Vec<f32> {
    let bytes = random_bytes(m * cols, seed ^ 0xabc);
    let mut x: Vec<f32> = bytes
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let scale = [0.01f32, 0.3, 2.0, 17.0][(i / 64) % 4];
            (f32::from(b) - 127.5) / 127.5 * scale
        })
        .collect();
    let zeros = 32.min(x.len());
    x[..zeros].fill(0.0);
    if x.len() > 70 {
        x[64] = 2.0;
        x[65] = 1.0; // 1.0 · 127/2 = 63.5: a tie
    }
    x
}

fn matrix(ty: WeightType, rows: usize, cols: usize, seed: u64) -> WeightMatrix {
    let data: Vec<u8> = (0..rows).flat_map(|r| random_row(ty, cols, seed * 1000 + r as u64)).collect();
    WeightMatrix::new(ty, &data, rows, cols).unwrap()
}

/// Σ |w| · |x| per output: the scale that float reassociation errors are relative to.
fn magnitudes(w: &WeightMatrix, x: &[f32], m: usize) -> (Vec<f32>, Vec<f32>) {
    let (n, k) = (w.rows(), w.cols());
    let mut dense = vec![0f32; k];
    let (mut abs, mut exact) = (vec![0f32; m * n], vec![0f32; m * n]);
    for r in 0..n {
        w.dequantize_row(r, &mut dense);
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            abs[i * n + r] = dense.iter().zip(xi).map(|(a, b)| (a * b).abs()).sum();
            exact[i * n + r] = dense.iter().zip(xi).map(|(a, b)| a * b).sum();
        }
    }
    (abs, exact)
}

fn check_type(ty: WeightType, rows: usize, cols: usize, ms: &[usize], seed: u64) {
    let w = matrix(ty, rows, cols, seed);
    for &m in ms {
        let x = activations(m, cols, seed + m as u64);
        let input = LayerInput::new(x.clone(), m, cols);
        let mut reference = vec![0f32; m * rows];
        w.matmul_with(Isa::Scalar, &input, &mut reference);
        let (abs, exact) = magnitudes(&w, &x, m);
        for (i, (&r, (&a, &e))) in reference.iter().zip(abs.iter().zip(&exact)).enumerate() {
            // The reference quantizes the activations (about 1/254 of each block's largest value).
            assert!((r - e).abs() <= 0.02 * a + 1e-6, "{ty:?} m={m} [{i}]: reference {r} vs f32 product {e} (|.| {a})");
        }
        for isa in Isa::available().into_iter().skip(1) {
            let mut y = vec![f32::NAN; m * rows];
            w.matmul_with(isa, &input, &mut y);
            for (i, ((&v, &r), &a)) in y.iter().zip(&reference).zip(&abs).enumerate() {
                assert!(
                    (v - r).abs() <= 1e-5 * a + 1e-30,
                    "{ty:?} {isa:?} m={m} [{i}]: {v} vs reference {r} (|.| {a})"
                );
            }
        }
    }
}

#[test]
fn every_type_on_every_instruction_set_matches_the_reference() {
    for ty in WeightType::ALL {
        let cols = if ty.block_elems() == 256 { 512 } else { 96 };
        check_type(ty, 37, cols, &[1, 2, 3, 4, 5, 9], 1);
    }
}

#[test]
fn prompt_sized_products_match_the_reference() {
    // Enough activation rows for the blocked GEMM, and rows that do not fill its tiles.
    for ty in WeightType::ALL {
        let cols = if ty.block_elems() == 256 { 768 } else { 160 };
        check_type(ty, 45, cols, &[16, 33], 2);
    }
}

/// `y[i·n + r] = dot(weight row r, activation row i, i)` for every output, activations in `format`.
fn per_output(
    w: &WeightMatrix,
    input: &LayerInput,
    format: ActFormat,
    dot: impl Fn(&[u8], &ActRow<'_>, usize) -> f32,
) -> Vec<f32> {
    let (n, m) = (w.rows(), input.rows());
    let q = input.quantized(format);
    let mut y = vec![0f32; m * n];
    for r in 0..n {
        for i in 0..m {
            y[i * n + r] = dot(w.row_bytes(r), &q.row(i), i);
        }
    }
    y
}

/// The prompt GEMM of a `rows × cols` matrix of `ty` (seed `seed`) times `m` activation rows, for each of `ms`, equal
/// bit for bit to `expected` (a transcription of llama.cpp's order), on CPUs that have the GEMM.
fn assert_prompt_products(
    ty: WeightType,
    (rows, cols, seed): (usize, usize, u64),
    ms: &[usize],
    expected: impl Fn(&WeightMatrix, &LayerInput) -> Vec<f32>,
) {
    if !Isa::available().contains(&Isa::Avx512) {
        return; // the blocked GEMM is AVX-512 only; the row kernels are checked above
    }
    let w = matrix(ty, rows, cols, seed);
    for &m in ms {
        let input = LayerInput::new(activations(m, cols, seed + 1 + m as u64), m, cols);
        let mut y = vec![f32::NAN; m * rows];
        let pass = super::pool::PromptRows { first: 0, total: m, chunk: m };
        super::panel::forward_pass(Some(pass), || w.matmul_with(Isa::Avx512, &input, &mut y));
        for (i, (v, e)) in y.iter().zip(&expected(&w, &input)).enumerate() {
            assert_eq!(v.to_bits(), e.to_bits(), "{ty:?} m={m} [{i}]: {v} vs {e}");
        }
    }
}

/// llama.cpp's batched product for Q8_0 and Q5_0 (tinyBLAS), transcribed: per output, 8 float
/// accumulators, accumulator `l` adding each block's group of 4 values `l` as `fma(d_w · d_a, sum, acc)`, then
/// the accumulators reduced as `hsum(__m256)` reduces them.
fn tinyblas_q0(w: &WeightMatrix, input: &LayerInput) -> Vec<f32> {
    let ty = w.weight_type();
    per_output(w, input, ActFormat::Q8_0, |row, a, _| {
        let mut acc = [0f32; 8];
        for (b, block) in row.chunks_exact(ty.block_bytes()).enumerate() {
            let (wq, dw, _) = block32(ty, block);
            let scale = dw * a.d[b];
            for (l, acc) in acc.iter_mut().enumerate() {
                let at = 4 * l..4 * l + 4;
                let sum: i32 =
                    wq[at.clone()].iter().zip(&a.qs[b * 32..][at]).map(|(&w, &x)| i32::from(w) * i32::from(x)).sum();
                *acc = scale.mul_add(sum as f32, *acc);
            }
        }
        reduce8(&acc)
    })
}

#[test]
fn prompt_products_of_q8_0_and_q5_0_are_llama_cpps_to_the_bit() {
    for ty in [WeightType::Q8_0, WeightType::Q5_0] {
        assert_prompt_products(ty, (45, 160, 3), &[8, 16, 33], tinyblas_q0);
    }
}

/// llama.cpp's batched product for Q3_K, Q5_K and Q6_K, as its outputs show it rounds (fitted to its tensors,
/// every output of a layer bit for bit): per super-block one integer `Σ scale · q · a`, multiplied by `d_w` first,
/// less `dmin · Σ min · sum` in one rounding (Q5_K), then added as `fma(d_a, ·, acc)`.
fn kquant_weight_scale_first(w: &WeightMatrix, input: &LayerInput) -> Vec<f32> {
    let ty = w.weight_type();
    per_output(w, input, ActFormat::Q8_K, |row, a, _| {
        let mut acc = 0f32;
        for (b, block) in row.chunks_exact(ty.block_bytes()).enumerate() {
            let sb = super_block(ty, block);
            let (qs, bsums) = (&a.qs[b * 256..(b + 1) * 256], &a.sums[b * 16..(b + 1) * 16]);
            let total: i32 = (0..256).map(|e| sb.scale[e / sb.sub] * i32::from(sb.q[e]) * i32::from(qs[e])).sum();
            let mut v = sb.d * total as f32;
            if ty == WeightType::Q5_K {
                let mins: i32 = (0..8).map(|s| sb.min[s] * (bsums[2 * s] + bsums[2 * s + 1])).sum();
                v = (-sb.dmin).mul_add(mins as f32, v);
            }
            acc = a.d[b].mul_add(v, acc);
        }
        acc
    })
}

/// llama.cpp's `vec_dot_q3_K_q8_K`, `vec_dot_q5_K_q8_K` and `vec_dot_q6_K_q8_K` (AVX2), which it takes for prompts of
/// fewer than 8 rows, transcribed: per super-block 8 integer lanes, lane `l` taking values `4l..4l+4` of every 32
/// times their sub-block's scale (Q6_K's values unsigned, its lanes less `32 · scale · sum` of sub-blocks `2l` and
/// `2l+1`); `fma(d_a·d_w, lane, acc)` per lane; `hsum_float_8`, plus Q5_K's minimums summed apart.
fn kquant_vec_dot(w: &WeightMatrix, input: &LayerInput) -> Vec<f32> {
    let ty = w.weight_type();
    let offset = if ty == WeightType::Q6_K { 32 } else { 0 };
    per_output(w, input, ActFormat::Q8_K, |row, a, _| {
        let (mut acc, mut summs) = ([0f32; 8], 0f32);
        for (b, block) in row.chunks_exact(ty.block_bytes()).enumerate() {
            let sb = super_block(ty, block);
            let (qs, bsums) = (&a.qs[b * 256..(b + 1) * 256], &a.sums[b * 16..(b + 1) * 16]);
            for (l, acc) in acc.iter_mut().enumerate() {
                let mut lane = 0i32;
                for c in 0..8 {
                    let at = 32 * c + 4 * l;
                    let s = if sb.sub == 16 { sb.scale[2 * c + l / 4] } else { sb.scale[c] };
                    let dot: i32 = (at..at + 4).map(|e| (i32::from(sb.q[e]) + offset) * i32::from(qs[e])).sum();
                    lane += s * dot;
                }
                if offset != 0 {
                    lane -= 32 * (bsums[2 * l] * sb.scale[2 * l] + bsums[2 * l + 1] * sb.scale[2 * l + 1]);
                }
                *acc = (a.d[b] * sb.d).mul_add(lane as f32, *acc);
            }
            if ty == WeightType::Q5_K {
                let mins: i32 = (0..8).map(|s| sb.min[s] * (bsums[2 * s] + bsums[2 * s + 1])).sum();
                summs = (-a.d[b] * sb.dmin).mul_add(mins as f32, summs);
            }
        }
        reduce8(&acc) + summs
    })
}

#[test]
fn prompt_products_of_q3_k_q5_k_and_q6_k_are_llama_cpps_to_the_bit() {
    for ty in [WeightType::Q3_K, WeightType::Q5_K, WeightType::Q6_K] {
        assert_prompt_products(ty, (45, 512, 5), &[1, 5, 7, 8, 16, 33], |w, input| {
            if input.rows() < 8 {
                kquant_vec_dot(w, input)
            } else {
                kquant_weight_scale_first(w, input)
            }
        });
    }
}

/// llama.cpp's repacked Q4_K and Q2_K GEMMs (`ggml_gemm_q{4,2}_K_8x8_q8_K`), transcribed: one integer per part of a
/// super-block (Q4_K: 64 values, Q2_K: 128) added as `fma(·, d_w·d_a, acc)`, the minimums' per part into an
/// accumulator of their own, `acc − acc_min`; the last `rows % 4` rows as its GEMVs, one integer per super-block.
fn kquant_repacked(w: &WeightMatrix, input: &LayerInput) -> Vec<f32> {
    let (ty, m) = (w.weight_type(), input.rows());
    let part = if ty == WeightType::Q4_K { 64 } else { 128 };
    per_output(w, input, ActFormat::Q8_K, |row, a, i| {
        let gemv = i >= m - m % 4;
        let (mut acc, mut acc_min) = (0f32, 0f32);
        for (b, block) in row.chunks_exact(ty.block_bytes()).enumerate() {
            let sb = super_block(ty, block);
            let (qs, bsums) = (&a.qs[b * 256..(b + 1) * 256], &a.sums[b * 16..(b + 1) * 16]);
            let sums: Vec<(i32, i32)> = (0..256 / part)
                .map(|pt| {
                    let values = pt * part..(pt + 1) * part;
                    let dot = values.clone().map(|e| sb.scale[e / sb.sub] * i32::from(sb.q[e]) * i32::from(qs[e]));
                    let subs = pt * part / sb.sub..(pt + 1) * part / sb.sub;
                    let per16 = sb.sub / 16;
                    let mins = subs.map(|s| sb.min[s] * bsums[s * per16..(s + 1) * per16].iter().sum::<i32>());
                    (dot.sum(), mins.sum())
                })
                .collect();
            let (d, dmin) = (sb.d * a.d[b], sb.dmin * a.d[b]);
            if gemv {
                let (t, mn) = sums.iter().fold((0, 0), |(t, mn), (x, y)| (t + x, mn + y));
                (acc, acc_min) = ((t as f32).mul_add(d, acc), (mn as f32).mul_add(dmin, acc_min));
            } else {
                for &(t, mn) in &sums {
                    (acc, acc_min) = ((t as f32).mul_add(d, acc), (mn as f32).mul_add(dmin, acc_min));
                }
            }
        }
        acc - acc_min
    })
}

#[test]
fn prompt_products_of_q4_k_and_q2_k_are_llama_cpps_repacked_gemms_to_the_bit() {
    for ty in [WeightType::Q4_K, WeightType::Q2_K] {
        // llama.cpp repacks matrices of 8k rows
        assert_prompt_products(ty, (48, 512, 7), &[1, 3, 5, 8, 10, 16, 33], kquant_repacked);
    }
}

#[test]
fn dequantized_rows_follow_the_block_layout() {
    // Q4_0 block: scale 0.5, nibbles 0x21 → element 0 = (1 − 8)·0.5, element 16 = (2 − 8)·0.5.
    let mut block = vec![0u8; 18];
    block[..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
    block[2] = 0x21;
    let mut out = vec![0f32; 32];
    dequantize_row(WeightType::Q4_0, &block, &mut out);
    assert_eq!((out[0], out[16], out[1]), (-3.5, -3.0, -4.0));
}

#[test]
fn refuses_wrong_sizes() {
    assert!(WeightMatrix::new(WeightType::Q4_1, &[0; 20], 1, 33).is_none());
    assert!(WeightMatrix::new(WeightType::Q4_1, &[0; 21], 1, 32).is_none());
    assert!(WeightMatrix::new(WeightType::Q8_0, &[0; 34], 1, 32).is_some());
    assert!(WeightMatrix::new(WeightType::Q4_K, &[0; 144], 1, 128).is_none());
    assert!(WeightMatrix::new(WeightType::F16, &[0; 6], 1, 3).is_some());
    assert!(WeightMatrix::new(WeightType::F16, &[], 0, 3).is_none());
}

fn any_type() -> impl Strategy<Value = WeightType> {
    prop::sample::select(WeightType::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn random_blocks_agree_across_instruction_sets(ty in any_type(), seed in any::<u64>(), m in prop::sample::select(vec![1usize, 2, 3, 5, 8, 17, 40]), rows in 1usize..20) {
        let cols = ty.block_elems().max(32) * 2;
        check_type(ty, rows, cols, &[m], seed);
    }
}
