//! all-MiniLM-L6-v2 against sentence-transformers' reference outputs (`tests/refs/minilm.json`), plus
//! loading behaviour on the real file: tryMmap, cancellation, damaged copies.
//!
//! Needs the model in `$MODELHOST_MODELS_DIR` (else `~/.cache/modelhost/models`), as laid out by
//! `scripts/fetch_models.py`; without it each test fails, naming the command that fetches it.
//!
//! `cargo test --release -p modelhost-core --test minilm_embedding -- --ignored --nocapture` also runs the
//! timing report (load, single-sentence latency, throughput on 1000 short sentences, and that throughput as a
//! share of the machine's f32 FMA peak).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use modelhost_core::models::bert::{inspect, EmbeddingLoadOptions, EmbeddingModel};
use modelhost_core::storage::{self, Progress};
use modelhost_core::{BoxError, Error};

const MODEL_KEY: &str = "sentence-transformers/all-MiniLM-L6-v2";
const MIN_COSINE: f64 = 0.99999;
const MAX_ABS_DIFF: f64 = 1e-4;

/// The tests count live mappings, so they must not run side by side.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn models_dir() -> PathBuf {
    match std::env::var_os("MODELHOST_MODELS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/modelhost/models"),
    }
}

/// The model's folder; a missing model fails the test (the README's test command fetches it).
fn model_dir() -> PathBuf {
    let dir = models_dir().join(MODEL_KEY);
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} not found: run `python3 scripts/fetch_models.py` (or `make test`, which fetches it)",
        dir.display()
    );
    dir
}

fn refs() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/refs/minilm.json");
    serde_json::from_slice(&std::fs::read(&path).expect("reference file")).expect("reference JSON")
}

fn load(dir: &Path, try_mmap: bool) -> EmbeddingModel {
    let opts = EmbeddingLoadOptions { try_mmap, context_length: None };
    EmbeddingModel::load(dir, &opts, &mut Progress::new(None)).expect("load")
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

/// Cosine similarity and max absolute difference, in f64.
fn compare(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let (mut dot, mut na, mut nb, mut max) = (0f64, 0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
        max = max.max((x - y).abs());
    }
    (dot / (na.sqrt() * nb.sqrt()), max)
}

#[test]
fn matches_sentence_transformers() {
    let _g = serial();
    let dir = model_dir();
    let refs = refs();
    let model = load(&dir, true);
    assert_eq!(model.dim(), refs["model"]["embedding_dim"].as_u64().unwrap() as usize);
    assert_eq!(model.max_seq_length(), refs["model"]["max_seq_length"].as_u64().unwrap() as usize);
    assert_eq!(model.architecture(), "bert");
    let cases = refs["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();

    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(model.tokenize(text).unwrap(), want, "token ids of {text:?}");
    }
    assert!(cases.iter().any(|c| c["truncated"].as_bool() == Some(true)), "the refs include a truncated text");
    assert!(texts.contains(&""), "the refs include the empty string");

    // Batched, as `model.encode(all, batch_size=32)`.
    let dim = model.dim();
    let batched = model.embed(&texts).unwrap();
    assert_eq!(batched.len(), texts.len() * dim);
    let (mut worst_cos, mut worst_diff) = (1f64, 0f64);
    for (case, got) in cases.iter().zip(batched.chunks_exact(dim)) {
        let (cos, diff) = compare(got, &floats(&case["embedding"]));
        let text = case["text"].as_str().unwrap();
        assert!(cos >= MIN_COSINE && diff <= MAX_ABS_DIFF, "{text:?}: cosine {cos}, max abs diff {diff}");
        (worst_cos, worst_diff) = (worst_cos.min(cos), worst_diff.max(diff));
    }
    eprintln!("batched vs sentence-transformers: worst cosine {worst_cos:.9}, worst max abs diff {worst_diff:.2e}");
    // One at a time, as the reference's unnormalised vectors were made: they agree after normalising.
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let got = model.embed(&[text]).unwrap();
        let mut want = floats(&case["mean_pooled_unnormalized"]);
        let norm = want.iter().map(|x| x * x).sum::<f32>().sqrt();
        want.iter_mut().for_each(|x| *x /= norm);
        let (cos, diff) = compare(&got, &want);
        assert!(cos >= MIN_COSINE && diff <= MAX_ABS_DIFF, "{text:?} alone: cosine {cos}, max abs diff {diff}");
    }
    // The cosine matrix of the embeddings.
    let matrix = refs["cosine_similarity_matrix_of_embeddings"].as_array().unwrap();
    for (i, row) in matrix.iter().enumerate() {
        for (j, want) in row.as_array().unwrap().iter().enumerate() {
            let (cos, _) = compare(&batched[i * dim..(i + 1) * dim], &batched[j * dim..(j + 1) * dim]);
            assert!((cos - want.as_f64().unwrap()).abs() <= 1e-5, "cosine[{i}][{j}] = {cos}, want {want}");
        }
    }
    assert!(model.embed(&[]).unwrap().is_empty());
}

/// Requests racing on a fresh model: one packs the matrices for the AVX-512 kernels, the others run meanwhile
/// (on the rows in place) or after; every one matches sentence-transformers, and later requests too.
#[test]
fn concurrent_first_requests_agree() {
    let _g = serial();
    let refs = refs();
    let cases = refs["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    for round in 0..3 {
        let model = load(&model_dir(), true);
        let dim = model.dim();
        let results: Vec<Vec<f32>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4).map(|_| scope.spawn(|| model.embed(&texts).unwrap())).collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        for got in results.iter().chain([&model.embed(&texts).unwrap()]) {
            for (case, v) in cases.iter().zip(got.chunks_exact(dim)) {
                let (cos, diff) = compare(v, &floats(&case["embedding"]));
                assert!(cos >= MIN_COSINE && diff <= MAX_ABS_DIFF, "round {round}: cosine {cos}, max abs diff {diff}");
            }
        }
    }
}

/// The row path that CPUs without AVX-512 take (`gemm` and the AVX2 kernels) against the same references: this
/// test binary again, in a child process with `MODELHOST_NO_AVX512` set.
#[test]
fn matches_sentence_transformers_without_avx512() {
    if std::env::var_os("MODELHOST_NO_AVX512").is_some() {
        return; // already the row path: `matches_sentence_transformers` covers it
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["matches_sentence_transformers", "--exact", "--test-threads=1"])
        .env("MODELHOST_NO_AVX512", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("1 passed"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn shorter_context_truncates() {
    let _g = serial();
    let dir = model_dir();
    let opts = EmbeddingLoadOptions { try_mmap: true, context_length: Some(8) };
    let model = EmbeddingModel::load(&dir, &opts, &mut Progress::new(None)).unwrap();
    assert_eq!(model.max_seq_length(), 8);
    let ids = model.tokenize("The history of computing is a story of steadily shrinking machines").unwrap();
    assert_eq!(ids.len(), 8);
    assert_eq!((ids[0], ids[7]), (101, 102));
    for bad in [0, 257] {
        let opts = EmbeddingLoadOptions { try_mmap: true, context_length: Some(bad) };
        let err = EmbeddingModel::load(&dir, &opts, &mut Progress::new(None)).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{bad}: {err}");
    }
}

#[test]
fn inspect_reads_headers_only() {
    let _g = serial();
    let dir = model_dir();
    let before = storage::mapped_file_count();
    let info = inspect(&dir).unwrap();
    assert_eq!(storage::mapped_file_count(), before);
    assert_eq!((info.architecture.as_str(), info.dim, info.max_seq_length), ("bert", 384, 256));
    assert_eq!(info.dtype, "F32");
    assert_eq!(info.weights_bytes, std::fs::metadata(dir.join("model.safetensors")).unwrap().len());
    assert!((22_000_000..23_000_000).contains(&info.params), "{}", info.params);
    assert_eq!(load(&dir, true).info(), &info);
}

#[test]
fn try_mmap_false_gives_identical_vectors() {
    let _g = serial();
    let dir = model_dir();
    let texts = ["This is a test sentence.", "", "Café au lait", "A man is eating food."];
    let before = storage::mapped_file_count();
    let owned = load(&dir, false);
    assert!(owned.mapped_file().is_none());
    assert_eq!(storage::mapped_file_count(), before);
    let mapped = load(&dir, true);
    assert!(mapped.mapped_file().is_some());
    assert_eq!(storage::mapped_file_count(), before + 1);
    assert_eq!(owned.embed(&texts).unwrap(), mapped.embed(&texts).unwrap());
    // A second load shares the mapping; it goes with the last user.
    let again = load(&dir, true);
    assert!(std::sync::Arc::ptr_eq(again.mapped_file().unwrap(), mapped.mapped_file().unwrap()));
    drop((mapped, again));
    assert_eq!(storage::mapped_file_count(), before);
}

#[test]
fn progress_is_monotone_and_a_failing_callback_cancels() {
    let _g = serial();
    let dir = model_dir();
    for try_mmap in [true, false] {
        let mut seen = Vec::new();
        {
            let mut cb = |v: f32| -> Result<(), BoxError> {
                seen.push(v);
                Ok(())
            };
            let mut progress = Progress::new(Some(&mut cb));
            let opts = EmbeddingLoadOptions { try_mmap, context_length: None };
            EmbeddingModel::load(&dir, &opts, &mut progress).unwrap();
        }
        assert!(seen.len() >= 10, "{try_mmap}: only {} progress calls", seen.len());
        assert!(seen.windows(2).all(|w| w[1] > w[0]) && seen.iter().all(|v| (0.0..1.0).contains(v)), "{seen:?}");

        let before = storage::mapped_file_count();
        let mut calls = 0;
        let mut cb = |v: f32| -> Result<(), BoxError> {
            calls += 1;
            if v > 0.5 {
                Err("stop".into())
            } else {
                Ok(())
            }
        };
        let mut progress = Progress::new(Some(&mut cb));
        let opts = EmbeddingLoadOptions { try_mmap, context_length: None };
        let err = EmbeddingModel::load(&dir, &opts, &mut progress).unwrap_err();
        assert!(matches!(err, Error::Cancelled(_)), "{err}");
        assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "stop");
        assert_eq!(storage::mapped_file_count(), before, "a cancelled load leaves nothing mapped");
    }
}

/// A copy of the model folder with one file replaced, in a fresh temporary folder.
fn damaged_copy(dir: &Path, name: &str, file: &str, contents: &[u8]) -> PathBuf {
    let out = std::env::temp_dir().join(format!("mh-minilm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("1_Pooling")).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        if f == file {
            std::fs::write(out.join(f), contents).unwrap();
        } else if f == "model.safetensors" {
            // Large: link instead of copying.
            std::os::unix::fs::symlink(dir.join(f), out.join(f)).unwrap();
        } else {
            std::fs::copy(dir.join(f), out.join(f)).unwrap();
        }
    }
    out
}

fn load_error(dir: &Path) -> (PathBuf, String) {
    let before = storage::mapped_file_count();
    let opts = EmbeddingLoadOptions { try_mmap: true, context_length: None };
    let err = EmbeddingModel::load(dir, &opts, &mut Progress::new(None)).unwrap_err();
    assert_eq!(storage::mapped_file_count(), before);
    match err {
        Error::ModelLoad { path, reason } => (path, reason),
        other => panic!("not a load error: {other}"),
    }
}

#[test]
fn damaged_files_name_the_file() {
    let _g = serial();
    let dir = model_dir();
    let weights_bytes = std::fs::read(dir.join("model.safetensors")).unwrap();

    let truncated = damaged_copy(&dir, "truncated", "model.safetensors", &weights_bytes[..weights_bytes.len() / 2]);
    let (path, reason) = load_error(&truncated);
    assert_eq!(path, truncated.join("model.safetensors"));
    assert!(reason.contains("past the end"), "{reason}");
    assert!(inspect(&truncated).is_err());

    let header_cut = damaged_copy(&dir, "header", "model.safetensors", &weights_bytes[..100]);
    let (path, reason) = load_error(&header_cut);
    assert_eq!(path, header_cut.join("model.safetensors"));
    assert!(reason.contains("header length"), "{reason}");

    let bad_config = damaged_copy(&dir, "config", "config.json", b"{\"model_type\": \"bert\", ");
    let (path, reason) = load_error(&bad_config);
    assert_eq!(path, bad_config.join("config.json"));
    assert!(reason.contains("JSON"), "{reason}");

    let bad_tokenizer = damaged_copy(&dir, "tokenizer", "tokenizer.json", b"{\"version\": 1");
    let (path, _) = load_error(&bad_tokenizer);
    assert_eq!(path, bad_tokenizer.join("tokenizer.json"));

    let bad_pooling = damaged_copy(&dir, "pooling", "1_Pooling/config.json", b"[]");
    let (path, _) = load_error(&bad_pooling);
    assert_eq!(path, bad_pooling.join("1_Pooling/config.json"));

    let other_arch = damaged_copy(
        &dir,
        "arch",
        "config.json",
        br#"{"model_type": "t5", "architectures": ["T5EncoderModel"], "d_model": 512}"#,
    );
    let opts = EmbeddingLoadOptions { try_mmap: true, context_length: None };
    let err = EmbeddingModel::load(&other_arch, &opts, &mut Progress::new(None)).unwrap_err();
    assert!(matches!(err, Error::NotSupported(_)), "{err}");

    for d in [truncated, header_cut, bad_config, bad_tokenizer, bad_pooling, other_arch] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn fast_wordpiece_tokenizer_matches_tokenizers() {
    let dir = model_dir();
    let bytes = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let ours = modelhost_core::text::wordpiece::load(&bytes).expect("MiniLM's tokenizer takes the fast path");
    let mut theirs = tokenizers::Tokenizer::from_bytes(&bytes).unwrap();
    // The file's own padding and truncation (to 128) are not part of the fast path: `embedding` sets its own.
    theirs.with_padding(None).with_truncation(None).unwrap();
    let mut texts: Vec<String> = refs()["cases"]
        .as_array()
        .map(|cases| cases.iter().filter_map(|c| c["text"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    texts.extend(
        [
            "",
            "   ",
            "Hello, World! [SEP] [cls] [MASK]x",
            "naïve café Ωmega straße 東京都 😀👍🏽 ﬁ",
            "unaffable antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
            "tabs\tand\nnewlines\r\n  and   runs",
            "x".repeat(150).as_str(),
            "9,999.50 $ 3.14e-10 -- ... ?!",
        ]
        .map(str::to_owned),
    );
    texts.extend(sentences(50));
    for text in &texts {
        let (a, b) = (ours.encode(text.as_str(), true).unwrap(), theirs.encode(text.as_str(), true).unwrap());
        assert_eq!(a.get_ids(), b.get_ids(), "{text:?}");
        assert_eq!(a.get_type_ids(), b.get_type_ids(), "{text:?}");
        assert_eq!(a.get_tokens(), b.get_tokens(), "{text:?}");
        assert_eq!(a.get_offsets(), b.get_offsets(), "{text:?}");
    }
    assert_eq!(tokenizers::Model::get_vocab_size(ours.get_model()), theirs.get_vocab_size(false));
}

/// Deterministic short sentences (~17 tokens each, as the benchmark's).
fn sentences(n: usize) -> Vec<String> {
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima",
        "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    ];
    (0..n)
        .map(|i| {
            format!(
                "Sentence {i} talks about {} and {} while the weather stays {} today.",
                words[i % 20],
                words[(i * 7) % 20],
                words[(i * 3) % 20]
            )
        })
        .collect()
}

/// CPU time of the whole process (all threads), to compare work done on a shared machine.
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Floating-point operations per token in the encoder's matrix products (attention scores and the rest are
/// left out: under 2% at these lengths): two per multiply-add of Q, K, V, O and the two FFN matrices.
fn flops_per_token(hidden: f64, ffn: f64, layers: f64) -> f64 {
    2.0 * layers * (4.0 * hidden * hidden + 2.0 * hidden * ffn)
}

/// This machine's f32 FMA peak on `threads` threads, in GFLOP/s: independent AVX-512 (else AVX2) FMA chains,
/// enough of them to cover the instruction's latency on two ports.
fn fma_peak_gflops(threads: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        const CHAINS: usize = 12;
        const STEPS: usize = 50_000_000;
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512() -> f32 {
            let (b, c) = (_mm512_set1_ps(1.000_000_1), _mm512_set1_ps(1e-7));
            let mut acc: [__m512; CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
            for _ in 0..STEPS {
                for a in acc.iter_mut() {
                    *a = _mm512_fmadd_ps(*a, b, c);
                }
            }
            acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2() -> f32 {
            let (b, c) = (_mm256_set1_ps(1.000_000_1), _mm256_set1_ps(1e-7));
            let mut acc: [__m256; CHAINS] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
            for _ in 0..STEPS {
                for a in acc.iter_mut() {
                    *a = _mm256_fmadd_ps(*a, b, c);
                }
            }
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), acc.iter().fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a)));
            out.iter().sum()
        }
        let wide = is_x86_feature_detected!("avx512f");
        let lanes = if wide { 16.0 } else { 8.0 };
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                // SAFETY: each function runs only where its instruction set was detected.
                s.spawn(move || {
                    std::hint::black_box(unsafe {
                        if wide {
                            avx512()
                        } else {
                            avx2()
                        }
                    })
                });
            }
        });
        threads as f64 * (CHAINS * STEPS) as f64 * lanes * 2.0 / t.elapsed().as_secs_f64() / 1e9
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = threads;
        f64::NAN
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Timings to compare with sentence-transformers on the same machine (`--ignored --nocapture`).
#[test]
#[ignore = "timing report, not a check"]
fn timing_report() {
    let _g = serial();
    let dir = model_dir();
    let opts = EmbeddingLoadOptions::default();
    let mut loads = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let m = EmbeddingModel::load(&dir, &opts, &mut Progress::new(None)).unwrap();
        loads.push(t.elapsed().as_secs_f64() * 1e3);
        drop(m);
    }
    let model = EmbeddingModel::load(&dir, &opts, &mut Progress::new(None)).unwrap();
    let texts = sentences(1000);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens: usize = refs.iter().map(|t| model.tokenize(t).unwrap().len()).sum();
    model.embed(&refs[..64]).unwrap();
    let mut rates = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..3 {
        let (t, c) = (Instant::now(), cpu_seconds());
        model.embed(&refs).unwrap();
        rates.push(refs.len() as f64 / t.elapsed().as_secs_f64());
        cpu.push(cpu_seconds() - c);
    }
    let mut lat = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        model.embed(&["This is a test sentence."]).unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "threads {}: load median {:.1} ms (min {:.1}); 1000 sentences ({:.1} tokens each): {:.0} sentences/s \
         (best {:.0}), {:.2} CPU s per 1000; single sentence median {:.2} ms (min {:.2})",
        rayon::current_num_threads(),
        median(loads.clone()),
        loads.iter().copied().fold(f64::INFINITY, f64::min),
        tokens as f64 / refs.len() as f64,
        median(rates.clone()),
        rates.iter().copied().fold(0.0, f64::max),
        median(cpu),
        median(lat.clone()),
        lat.iter().copied().fold(f64::INFINITY, f64::min),
    );
    let per_token = flops_per_token(384.0, 1536.0, 6.0);
    let achieved = median(rates) * tokens as f64 / refs.len() as f64 * per_token / 1e9;
    let peak = fma_peak_gflops(rayon::current_num_threads());
    println!(
        "matrix products {:.1} MFLOP per token: {achieved:.0} GFLOP/s of a {peak:.0} GFLOP/s FMA peak ({:.0}%)",
        per_token / 1e6,
        100.0 * achieved / peak
    );
}
