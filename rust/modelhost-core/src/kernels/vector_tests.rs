//! Against llama.cpp's own code: `tests/data/kernel_vectors.bin` holds, for every weight type, blocks
//! quantized by llama.cpp, their dequantization, llama.cpp's conversion of activations to the type's
//! activation format, and its dot products (`scripts/kernel_vectors.py` wrote it through the ggml of
//! llama-cpp-python 0.3.36). Dequantization and activation conversion must match bit for bit; the dot
//! products up to float reassociation.

use half::{bf16, f16};

use super::act::LayerInput;
use super::dispatch::Isa;
use super::matrix::WeightMatrix;
use super::types::{ActFormat, WeightType};

const VECTORS: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kernel_vectors.bin"));

struct Record {
    ty: WeightType,
    act_type: u32,
    weights: Vec<u8>,
    dequantized: Vec<f32>,
    acts: Vec<u8>,
    dots: Vec<f32>,
}

fn u32_at(b: &[u8], at: &mut usize) -> u32 {
    let v = u32::from_le_bytes(b[*at..*at + 4].try_into().unwrap());
    *at += 4;
    v
}

fn blob(b: &[u8], at: &mut usize) -> Vec<u8> {
    let len = u32_at(b, at) as usize;
    let v = b[*at..*at + len].to_vec();
    *at += len;
    v
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn records() -> (Vec<Record>, usize, usize, usize) {
    assert_eq!(&VECTORS[..8], b"MHKV0001");
    let mut at = 8;
    let (count, rows, cols, m) =
        (u32_at(VECTORS, &mut at), u32_at(VECTORS, &mut at), u32_at(VECTORS, &mut at), u32_at(VECTORS, &mut at));
    let out = (0..count)
        .map(|_| {
            let ty = WeightType::from_ggml_id(u32_at(VECTORS, &mut at)).expect("a type the kernels run");
            let act_type = u32_at(VECTORS, &mut at);
            Record {
                ty,
                act_type,
                weights: blob(VECTORS, &mut at),
                dequantized: floats(&blob(VECTORS, &mut at)),
                acts: blob(VECTORS, &mut at),
                dots: floats(&blob(VECTORS, &mut at)),
            }
        })
        .collect();
    assert_eq!(at, VECTORS.len());
    (out, rows as usize, cols as usize, m as usize)
}

/// `kernel_vectors.py`'s activations: LCG integers scaled by powers of two, and a row of exact ties.
fn activations(m: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let scales = [1.0 / 64.0, 0.25, 2.0, 16.0];
    let mut out = Vec::with_capacity(m * cols);
    for _ in 0..m {
        for j in 0..cols {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let v = ((state >> 40) & 0xffff) as i32 - 32768;
            out.push(v as f32 / 4096.0 * scales[(j / 64) % 4]);
        }
    }
    let last = &mut out[(m - 1) * cols..];
    for (j, v) in last.iter_mut().enumerate() {
        *v = ((j % 254) as f32 - 127.0) + 0.5;
    }
    last[0] = 127.0;
    out
}

#[test]
fn every_type_follows_llama_cpp() {
    let (records, rows, cols, m) = records();
    assert_eq!(records.len(), WeightType::ALL.len(), "one record per type");
    for rec in records {
        let ty = rec.ty;
        // Dequantization: bit for bit.
        let w = WeightMatrix::new(ty, &rec.weights, rows, cols).unwrap();
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            w.dequantize_row(r, &mut row);
            for (i, (a, b)) in row.iter().zip(&rec.dequantized[r * cols..]).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{ty:?} dequantized row {r} [{i}]: {a} vs llama.cpp {b}");
            }
        }
        // Activation conversion: the same bytes.
        let x = activations(m, cols, u64::from(ty.ggml_id()) + 1);
        let input = LayerInput::new(x.clone(), m, cols);
        let format = ty.act_format();
        let expected_id = match format {
            ActFormat::F32 => 0,
            ActFormat::F16 => 1,
            ActFormat::BF16 => 30,
            ActFormat::Q8_0 => 8,
            ActFormat::Q8_1 => 9,
            ActFormat::Q8_K => 15,
        };
        assert_eq!(rec.act_type, expected_id, "{ty:?}: llama.cpp's vec_dot_type");
        let ours: Vec<u8> = match format {
            ActFormat::F32 => input.floats(format).iter().flat_map(|v| v.to_le_bytes()).collect(),
            ActFormat::F16 => input.floats(format).iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
            ActFormat::BF16 => input.floats(format).iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
            ActFormat::Q8_0 | ActFormat::Q8_1 => {
                let q = input.quantized(format);
                let mut out = Vec::new();
                for b in 0..q.d.len() {
                    out.extend(f16::from_f32(q.d[b]).to_le_bytes());
                    if format == ActFormat::Q8_1 {
                        out.extend(f16::from_f32(q.s[b]).to_le_bytes());
                    }
                    out.extend(q.qs[b * 32..(b + 1) * 32].iter().map(|&v| v as u8));
                }
                out
            }
            ActFormat::Q8_K => {
                let q = input.quantized(format);
                let mut out = Vec::new();
                for b in 0..q.d.len() {
                    out.extend(q.d[b].to_le_bytes());
                    out.extend(q.qs[b * 256..(b + 1) * 256].iter().map(|&v| v as u8));
                    out.extend(q.sums[b * 16..(b + 1) * 16].iter().flat_map(|&s| (s as i16).to_le_bytes()));
                }
                out
            }
        };
        assert_eq!(ours.len(), rec.acts.len(), "{ty:?} activation bytes");
        if let Some(i) = ours.iter().zip(&rec.acts).position(|(a, b)| a != b) {
            panic!("{ty:?}: activation byte {i} differs from llama.cpp's ({} vs {})", ours[i], rec.acts[i]);
        }
        // Dot products: up to float reassociation, on every instruction set.
        for isa in Isa::available() {
            let mut y = vec![0f32; m * rows];
            w.matmul_with(isa, &input, &mut y);
            for i in 0..m {
                for r in 0..rows {
                    let dense = &rec.dequantized[r * cols..(r + 1) * cols];
                    let scale: f32 = dense.iter().zip(&x[i * cols..]).map(|(a, b)| (a * b).abs()).sum();
                    let (ours, theirs) = (y[i * rows + r], rec.dots[i * rows + r]);
                    assert!(
                        (ours - theirs).abs() <= 1e-5 * scale,
                        "{ty:?} {isa:?} activation row {i} · weight row {r}: {ours} vs llama.cpp {theirs} (|.| {scale})"
                    );
                }
            }
        }
    }
}
