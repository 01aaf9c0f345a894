//! Throughput of the matmul kernels on SmolLM2-1.7B-shaped matrices, per weight type and instruction set:
//! `cargo bench -p modelhost-core --bench kernels [-- FILTER]`. Prints GB/s of weights streamed for one
//! token (decoding) and GMAC/s for a 128-token prompt; the comparison with llama.cpp lives in benches/.

use std::time::Instant;

use modelhost_core::kernels::act::LayerInput;
use modelhost_core::kernels::dispatch::Isa;
use modelhost_core::kernels::matrix::WeightMatrix;
use modelhost_core::kernels::types::WeightType;

fn random_bytes(n: usize, mut state: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

/// Random blocks whose f16 scales are small finite numbers.
fn matrix(ty: WeightType, rows: usize, cols: usize) -> WeightMatrix {
    let mut data = random_bytes(rows * ty.row_bytes(cols).unwrap(), 7);
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    let at: &[usize] = match ty {
        WeightType::Q4_0 | WeightType::Q5_0 | WeightType::Q8_0 | WeightType::IQ4_NL => &[0],
        WeightType::Q4_1 | WeightType::Q5_1 | WeightType::Q4_K | WeightType::Q5_K => &[0, 2],
        WeightType::Q2_K => &[80, 82],
        WeightType::Q3_K => &[108],
        WeightType::Q6_K => &[208],
        _ => &[],
    };
    if at.is_empty() {
        data = (0..rows * cols).flat_map(|i| half::f16::from_f32((i % 7) as f32 * 0.1).to_le_bytes()).collect();
        if ty == WeightType::F32 {
            data = (0..rows * cols).flat_map(|i| ((i % 7) as f32 * 0.1).to_le_bytes()).collect();
        }
    } else {
        for b in data.chunks_exact_mut(ty.block_bytes()) {
            for &a in at {
                b[a..a + 2].copy_from_slice(&scale);
            }
        }
    }
    WeightMatrix::new(ty, &data, rows, cols).unwrap()
}

/// Seconds of CPU time this process has used: with one thread, a per-core figure that other processes
/// on a shared machine do not distort (wall time is used with more threads).
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn time(mut f: impl FnMut(), min_secs: f64) -> f64 {
    let cpu = rayon::current_num_threads() == 1;
    f();
    let wall = Instant::now();
    let (start, mut n) = (if cpu { cpu_seconds() } else { 0.0 }, 0u32);
    while wall.elapsed().as_secs_f64() < min_secs || n < 3 {
        f();
        n += 1;
    }
    let spent = if cpu { cpu_seconds() - start } else { wall.elapsed().as_secs_f64() };
    spent / f64::from(n)
}

/// Decoding from memory: one matrix larger than the caches, one activation row.
fn stream(ty: WeightType) {
    let (n, k) = (if ty.block_elems() == 256 { 65536 } else { 49152 }, 8192);
    let w = matrix(ty, n, k);
    let bytes = (n * ty.row_bytes(k).unwrap()) as f64;
    for isa in Isa::available().into_iter().skip(1) {
        let x = LayerInput::new((0..k).map(|i| (i % 13) as f32 - 6.0).collect(), 1, k);
        let mut y = vec![0f32; n];
        let t = time(|| w.matmul_with(isa, &x, &mut y), 2.0);
        println!(
            "{:7} stream {n}x{k} ({:.0} MB) {:12} decode {:7.2} GB/s",
            ty.name(),
            bytes / 1e6,
            isa.name(),
            bytes / t / 1e9
        );
    }
}

fn main() {
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    if let Some(ty) = filter.as_deref().and_then(|f| f.strip_prefix("stream-")) {
        let ty = WeightType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(ty)).expect("a weight type");
        return stream(ty);
    }
    let shapes = [
        (2048usize, 2048usize, "attn 2048x2048"),
        (8192, 2048, "ffn up 8192x2048"),
        (2048, 8192, "ffn down 2048x8192"),
    ];
    let types = [
        WeightType::Q4_0,
        WeightType::Q4_K,
        WeightType::Q6_K,
        WeightType::Q8_0,
        WeightType::Q5_0,
        WeightType::Q4_1,
        WeightType::Q5_K,
        WeightType::Q3_K,
        WeightType::Q2_K,
        WeightType::IQ4_NL,
        WeightType::F16,
    ];
    println!(
        "threads: {} ({}), levels: {:?}",
        rayon::current_num_threads(),
        if rayon::current_num_threads() == 1 { "CPU time" } else { "wall time" },
        Isa::available()
    );
    for ty in types {
        if filter.as_deref().is_some_and(|f| !ty.name().eq_ignore_ascii_case(f)) {
            continue;
        }
        for &(n, k, name) in &shapes {
            let w = matrix(ty, n, k);
            let bytes = (n * ty.row_bytes(k).unwrap()) as f64;
            for isa in Isa::available().into_iter().skip(1) {
                let x1 = LayerInput::new((0..k).map(|i| (i % 13) as f32 - 6.0).collect(), 1, k);
                let mut y1 = vec![0f32; n];
                let t1 = time(|| w.matmul_with(isa, &x1, &mut y1), 0.3);
                let m = 128;
                let xs: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 - 8.0).collect();
                let mut ym = vec![0f32; m * n];
                // A fresh input per call: the activation quantization is part of the cost.
                let tm = time(|| w.matmul_with(isa, &LayerInput::new(xs.clone(), m, k), &mut ym), 0.5);
                println!(
                    "{:7} {:20} {:12} decode {:7.2} GB/s ({:6.3} ms)   prompt {:7.1} GMAC/s ({:7.2} ms)",
                    ty.name(),
                    name,
                    isa.name(),
                    bytes / t1 / 1e9,
                    t1 * 1e3,
                    (m * n * k) as f64 / tm / 1e9,
                    tm * 1e3
                );
            }
        }
    }
}
