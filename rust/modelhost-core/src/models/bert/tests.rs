//! The BERT loader and encoder against a plain f64 reference, on tiny models written here (every pooling
//! mode, activation, dtype and checkpoint prefix), and the errors of broken folders and weights.

use std::collections::BTreeMap;

use super::folder::{CONFIG_FILE, MODULES_FILE, ST_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use super::weights::f16_to_f32;
use super::*;
use crate::formats::safetensors::Dtype;
use crate::formats::safetensors_writer as writer;
use crate::kernels::f32_attention;
use crate::kernels::f32_ops::reference::act64;
use crate::BoxError;

/// Words of the tiny vocabulary (after the five special tokens).
const WORDS: &[&str] = &[
    "the", "a", "cat", "dog", "sat", "on", "mat", "and", "ran", "far", "big", "small", "red", "blue", "green", "sun",
    "moon", "star", "sky", "sea", "fish", "bird", "tree", "leaf", "rock", "sand", "wind", "rain", "snow", "fire",
    "##s", "##ing", "##ed", ".", ",", "!",
];

/// A tiny BERT folder description.
#[derive(Clone)]
struct Tiny {
    hidden: usize,
    heads: usize,
    layers: usize,
    inter: usize,
    max_pos: usize,
    max_seq: usize,
    act: &'static str,
    pooling: serde_json::Value,
    normalize: bool,
    dtype: Dtype,
    prefix: &'static str,
}

impl Default for Tiny {
    fn default() -> Self {
        Tiny {
            hidden: 36,
            heads: 3,
            layers: 2,
            inter: 72,
            max_pos: 80,
            max_seq: 64,
            act: "gelu",
            pooling: serde_json::json!({"word_embedding_dimension": 36, "pooling_mode_mean_tokens": true}),
            normalize: true,
            dtype: Dtype::F32,
            prefix: "",
        }
    }
}

fn vocab_size() -> usize {
    5 + WORDS.len()
}

/// Deterministic values in [-scale, scale), rounded to what `dtype` holds exactly.
fn values(seed: &mut u64, n: usize, scale: f32, center: f32, dtype: Dtype) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let u = (*seed >> 40) as f32 / (1u64 << 24) as f32;
            let v = center + scale * (2.0 * u - 1.0);
            match dtype {
                // Multiples of 2^-10 below 2 in magnitude are exact in f16.
                Dtype::F16 => (v * 1024.0).round() / 1024.0,
                Dtype::BF16 => f32::from_bits(v.to_bits() & 0xffff_0000),
                _ => v,
            }
        })
        .collect()
}

fn f32_to_f16_exact(v: f32) -> u16 {
    if v == 0.0 {
        return 0;
    }
    let b = v.to_bits();
    let sign = ((b >> 31) as u16) << 15;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    assert!((1..31).contains(&exp) && b & 0x1fff == 0, "{v} is not exact in f16");
    sign | ((exp as u16) << 10) | ((b >> 13) & 0x3ff) as u16
}

fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => writer::f32_bytes(values),
        Dtype::F16 => values.iter().flat_map(|&v| f32_to_f16_exact(v).to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|&v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect(),
        Dtype::F64 => values.iter().flat_map(|&v| f64::from(v).to_le_bytes()).collect(),
        other => panic!("{other}"),
    }
}

type Weights = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn weights(t: &Tiny) -> Weights {
    let (h, i, v) = (t.hidden, t.inter, vocab_size());
    let mut seed = 7u64;
    let mut w = Weights::new();
    let mut put = |name: &str, shape: Vec<usize>, scale: f32, center: f32| {
        let n = shape.iter().product();
        w.insert(name.to_string(), (shape, values(&mut seed, n, scale, center, t.dtype)));
    };
    put("embeddings.word_embeddings.weight", vec![v, h], 0.5, 0.0);
    put("embeddings.position_embeddings.weight", vec![t.max_pos, h], 0.2, 0.0);
    put("embeddings.token_type_embeddings.weight", vec![2, h], 0.1, 0.0);
    put("embeddings.LayerNorm.weight", vec![h], 0.2, 1.0);
    put("embeddings.LayerNorm.bias", vec![h], 0.1, 0.0);
    for l in 0..t.layers {
        let p = format!("encoder.layer.{l}.");
        for m in ["query", "key", "value"] {
            put(&format!("{p}attention.self.{m}.weight"), vec![h, h], 0.3, 0.0);
            put(&format!("{p}attention.self.{m}.bias"), vec![h], 0.1, 0.0);
        }
        put(&format!("{p}attention.output.dense.weight"), vec![h, h], 0.2, 0.0);
        put(&format!("{p}attention.output.dense.bias"), vec![h], 0.1, 0.0);
        put(&format!("{p}attention.output.LayerNorm.weight"), vec![h], 0.2, 1.0);
        put(&format!("{p}attention.output.LayerNorm.bias"), vec![h], 0.1, 0.0);
        put(&format!("{p}intermediate.dense.weight"), vec![i, h], 0.3, 0.0);
        put(&format!("{p}intermediate.dense.bias"), vec![i], 0.1, 0.0);
        put(&format!("{p}output.dense.weight"), vec![h, i], 0.2, 0.0);
        put(&format!("{p}output.dense.bias"), vec![h], 0.1, 0.0);
        put(&format!("{p}output.LayerNorm.weight"), vec![h], 0.2, 1.0);
        put(&format!("{p}output.LayerNorm.bias"), vec![h], 0.1, 0.0);
    }
    w
}

fn tokenizer_json() -> serde_json::Value {
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let mut vocab = serde_json::Map::new();
    for (id, tok) in specials.iter().chain(WORDS).enumerate() {
        vocab.insert(tok.to_string(), id.into());
    }
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(id, t)| {
            serde_json::json!({"id": id, "special": true, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false})
        })
        .collect();
    // Truncation and fixed padding in the file, as MiniLM's has them: the loader must override both.
    serde_json::json!({
        "version": "1.0",
        "truncation": {"max_length": 5, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 12}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0,
            "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
            "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100, "vocab": vocab}
    })
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mh-emb-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

fn write_json(path: &Path, v: &serde_json::Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

fn write_model(dir: &Path, t: &Tiny) -> Weights {
    write_json(
        &dir.join(CONFIG_FILE),
        &serde_json::json!({
            "architectures": ["BertModel"], "model_type": "bert", "vocab_size": vocab_size(),
            "hidden_size": t.hidden, "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
            "intermediate_size": t.inter, "hidden_act": t.act, "max_position_embeddings": t.max_pos,
            "type_vocab_size": 2, "layer_norm_eps": 1e-12, "position_embedding_type": "absolute",
            "hidden_dropout_prob": 0.1, "pad_token_id": 0
        }),
    );
    let w = weights(t);
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = w
        .iter()
        .map(|(name, (shape, v))| {
            let name = format!("{}{}", t.prefix, name);
            (name, shape.clone(), encode(v, t.dtype))
        })
        .collect();
    let mut tensors: Vec<(&str, Dtype, &[usize], &[u8])> =
        encoded.iter().map(|(n, s, b)| (n.as_str(), t.dtype, s.as_slice(), b.as_slice())).collect();
    // An unused int64 buffer as real checkpoints carry, and a pooler we do not load.
    let position_ids: Vec<u8> = (0..t.max_pos as i64).flat_map(|i| i.to_le_bytes()).collect();
    let shape = [1, t.max_pos];
    tensors.insert(0, ("embeddings.position_ids", Dtype::I64, &shape, &position_ids));
    std::fs::write(dir.join(WEIGHTS_FILE), writer::write(&tensors, &[("format", "pt")])).unwrap();
    write_json(&dir.join(TOKENIZER_FILE), &tokenizer_json());
    let mut modules = vec![
        serde_json::json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        serde_json::json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    if t.normalize {
        modules.push(
            serde_json::json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}),
        );
    }
    write_json(&dir.join(MODULES_FILE), &serde_json::Value::Array(modules));
    write_json(&dir.join(ST_CONFIG_FILE), &serde_json::json!({"max_seq_length": t.max_seq, "do_lower_case": false}));
    write_json(&dir.join("1_Pooling").join(CONFIG_FILE), &t.pooling);
    w
}

fn load(dir: &Path) -> Result<EmbeddingModel> {
    EmbeddingModel::load(dir, &EmbeddingLoadOptions::default(), &mut Progress::new(None))
}

fn load_with(dir: &Path, try_mmap: bool, context_length: Option<usize>) -> Result<EmbeddingModel> {
    EmbeddingModel::load(dir, &EmbeddingLoadOptions { try_mmap, context_length }, &mut Progress::new(None))
}

// ------------------------------------------------------------------------------------------------
// A plain f64 reference: one sequence at a time, no packing, no SIMD, textbook formulas.
// ------------------------------------------------------------------------------------------------

fn reference(w: &Weights, t: &Tiny, ids: &[u32]) -> Vec<f64> {
    let g = |name: &str| -> Vec<f64> { w[name].1.iter().map(|&v| f64::from(v)).collect() };
    let (h, n, d) = (t.hidden, ids.len(), t.hidden / t.heads);
    let ln = |x: &mut [f64], gamma: &[f64], beta: &[f64]| {
        for row in x.chunks_mut(h) {
            let mean = row.iter().sum::<f64>() / h as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / h as f64;
            for (j, v) in row.iter_mut().enumerate() {
                *v = (*v - mean) / (var + 1e-12).sqrt() * gamma[j] + beta[j];
            }
        }
    };
    let linear = |x: &[f64], k: usize, wt: &[f64], b: &[f64]| -> Vec<f64> {
        let out = b.len();
        let mut y = vec![0.0; x.len() / k * out];
        for (r, row) in x.chunks(k).enumerate() {
            for o in 0..out {
                y[r * out + o] = b[o] + (0..k).map(|i| row[i] * wt[o * k + i]).sum::<f64>();
            }
        }
        y
    };
    let (word, pos, ty) = (
        g("embeddings.word_embeddings.weight"),
        g("embeddings.position_embeddings.weight"),
        g("embeddings.token_type_embeddings.weight"),
    );
    let mut x = vec![0.0; n * h];
    for (p, &id) in ids.iter().enumerate() {
        for j in 0..h {
            x[p * h + j] = word[id as usize * h + j] + ty[j] + pos[p * h + j];
        }
    }
    ln(&mut x, &g("embeddings.LayerNorm.weight"), &g("embeddings.LayerNorm.bias"));
    for l in 0..t.layers {
        let p = |s: &str| g(&format!("encoder.layer.{l}.{s}"));
        let q = linear(&x, h, &p("attention.self.query.weight"), &p("attention.self.query.bias"));
        let k = linear(&x, h, &p("attention.self.key.weight"), &p("attention.self.key.bias"));
        let v = linear(&x, h, &p("attention.self.value.weight"), &p("attention.self.value.bias"));
        let mut ctx = vec![0.0; n * h];
        for head in 0..t.heads {
            for r in 0..n {
                let scores: Vec<f64> = (0..n)
                    .map(|c| (0..d).map(|j| q[r * h + head * d + j] * k[c * h + head * d + j]).sum::<f64>())
                    .map(|s| s / (d as f64).sqrt())
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = e.iter().sum();
                for j in 0..d {
                    ctx[r * h + head * d + j] = (0..n).map(|c| e[c] / total * v[c * h + head * d + j]).sum();
                }
            }
        }
        let o = linear(&ctx, h, &p("attention.output.dense.weight"), &p("attention.output.dense.bias"));
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        ln(&mut x, &p("attention.output.LayerNorm.weight"), &p("attention.output.LayerNorm.bias"));
        let mut inter = linear(&x, h, &p("intermediate.dense.weight"), &p("intermediate.dense.bias"));
        inter.iter_mut().for_each(|v| *v = act64(*v, t.act));
        let o = linear(&inter, t.inter, &p("output.dense.weight"), &p("output.dense.bias"));
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        ln(&mut x, &p("output.LayerNorm.weight"), &p("output.LayerNorm.bias"));
    }
    let on = |k: &str| t.pooling.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    let rows: Vec<&[f64]> = x.chunks(h).collect();
    let mean: Vec<f64> = (0..h).map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n as f64).collect();
    let mut out = Vec::new();
    if on("pooling_mode_cls_token") {
        out.extend_from_slice(rows[0]);
    }
    if on("pooling_mode_max_tokens") {
        out.extend((0..h).map(|j| rows.iter().map(|r| r[j]).fold(f64::NEG_INFINITY, f64::max)));
    }
    if on("pooling_mode_mean_tokens") {
        out.extend(&mean);
    }
    if on("pooling_mode_mean_sqrt_len_tokens") {
        out.extend(mean.iter().map(|m| m * n as f64 / (n as f64).sqrt()));
    }
    if on("pooling_mode_weightedmean_tokens") {
        let total: f64 = (1..=n).map(|i| i as f64).sum();
        out.extend((0..h).map(|j| rows.iter().enumerate().map(|(i, r)| r[j] * (i + 1) as f64).sum::<f64>() / total));
    }
    if on("pooling_mode_lasttoken") {
        out.extend_from_slice(rows[n - 1]);
    }
    if t.normalize {
        let norm = out.iter().map(|v| v * v).sum::<f64>().sqrt();
        out.iter_mut().for_each(|v| *v /= norm);
    }
    out
}

/// Texts of many lengths: short ones (the small-matrix path), a batch over 16 tokens (gemm), and
/// one over `ATTENTION_GEMM_LEN` tokens (attention through gemm).
fn texts() -> Vec<String> {
    let mut out = vec![String::new(), "cat".to_string(), "The cats sat on the mat.".to_string()];
    for (i, len) in [3usize, 9, 17, 30, 55, 70, 12].into_iter().enumerate() {
        out.push((0..len).map(|j| WORDS[(i * 7 + j * 5) % 30]).collect::<Vec<_>>().join(" "));
    }
    out.push("Dogs running, birds singing! UNKNOWNWORD".to_string());
    out
}

fn check_against_reference(t: &Tiny, model: &EmbeddingModel, w: &Weights) {
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let dim = model.dim();
    // All at once (batches, gemm) and one at a time (small path) must both match.
    let batched = model.embed(&refs).unwrap();
    for (i, text) in refs.iter().enumerate() {
        let ids = model.tokenize(text).unwrap();
        let want = reference(w, t, &ids);
        let single = model.embed(&[text]).unwrap();
        for got in [&batched[i * dim..(i + 1) * dim], &single[..]] {
            assert_eq!(got.len(), want.len());
            let diff = got.iter().zip(&want).map(|(a, b)| (f64::from(*a) - b).abs()).fold(0.0, f64::max);
            assert!(diff < 2e-5, "{text:?} ({} tokens): max abs diff {diff}", ids.len());
        }
    }
}

#[test]
fn matches_the_reference_on_every_path() {
    let t = Tiny::default();
    let dir = temp_dir("ref");
    let w = write_model(&dir.0, &t);
    let model = load(&dir.0).unwrap();
    assert_eq!((model.dim(), model.max_seq_length(), model.architecture()), (36, 64, "bert"));
    assert!(texts().iter().any(|s| model.tokenize(s).unwrap().len() >= f32_attention::ATTENTION_GEMM_LEN));
    check_against_reference(&t, &model, &w);
}

#[test]
fn every_pooling_mode_and_activation() {
    let modes = [
        serde_json::json!({"pooling_mode_cls_token": true}),
        serde_json::json!({"pooling_mode_max_tokens": true, "pooling_mode_mean_tokens": true,
            "pooling_mode_mean_sqrt_len_tokens": true}),
        serde_json::json!({"pooling_mode_weightedmean_tokens": true, "pooling_mode_lasttoken": true}),
    ];
    for (pooling, act, normalize) in [(0, "gelu_new", false), (1, "relu", true), (2, "silu", false)] {
        let t = Tiny { pooling: modes[pooling].clone(), act, normalize, ..Tiny::default() };
        let dir = temp_dir("modes");
        let w = write_model(&dir.0, &t);
        let model = load(&dir.0).unwrap();
        assert_eq!(model.dim(), [1, 3, 2][pooling] * t.hidden);
        check_against_reference(&t, &model, &w);
    }
}

#[test]
fn half_precision_and_prefixed_checkpoints() {
    for (dtype, prefix) in [(Dtype::F16, ""), (Dtype::BF16, "bert."), (Dtype::F64, "")] {
        let t = Tiny { dtype, prefix, ..Tiny::default() };
        let dir = temp_dir("dtype");
        let w = write_model(&dir.0, &t);
        let model = load(&dir.0).unwrap();
        check_against_reference(&t, &model, &w);
        let info = inspect(&dir.0).unwrap();
        assert_eq!(info.dtype, dtype.name());
        let floats: usize = w.values().map(|(s, _)| s.iter().product::<usize>()).sum();
        assert_eq!(info.params, floats as u64);
        // Nothing is viewed in place, so the mapping's pages were released; the mapping stays.
        assert!(model.mapped_file().is_some());
    }
}

#[test]
fn owned_and_mapped_loads_agree() {
    let dir = temp_dir("owned");
    write_model(&dir.0, &Tiny::default());
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let owned = load_with(&dir.0, false, None).unwrap();
    assert!(owned.mapped_file().is_none());
    let mapped = load_with(&dir.0, true, None).unwrap();
    assert_eq!(owned.embed(&refs).unwrap(), mapped.embed(&refs).unwrap());
}

#[test]
fn tokenizer_file_settings_are_overridden() {
    let dir = temp_dir("tok");
    write_model(&dir.0, &Tiny::default());
    let model = load(&dir.0).unwrap();
    // The file says: truncate at 5, pad to 12. sentence-transformers says: max_seq_length, no padding.
    assert_eq!(model.tokenize("cat").unwrap(), vec![2, 7, 3]);
    assert_eq!(model.tokenize("").unwrap(), vec![2, 3]);
    let long = vec!["cat"; 100].join(" ");
    let ids = model.tokenize(&long).unwrap();
    assert_eq!((ids.len(), ids[0], ids[63]), (64, 2, 3));
    // Stripped (and the normalizer lower-cases), as sentence-transformers feeds the tokenizer.
    assert_eq!(model.tokenize("  The CAT \n").unwrap(), model.tokenize("the cat").unwrap());
    let short = load_with(&dir.0, true, Some(4)).unwrap();
    assert_eq!(short.tokenize("the big red cat").unwrap(), vec![2, 5, 15, 3]);
    assert_eq!(short.max_seq_length(), 4);
    let minimal = load_with(&dir.0, true, Some(2)).unwrap();
    assert_eq!(minimal.tokenize("the big red cat").unwrap(), vec![2, 3]);
    assert_eq!(minimal.embed(&["the cat", ""]).unwrap().len(), 2 * 36);
}

#[test]
fn empty_and_repeated_inputs() {
    let dir = temp_dir("empty");
    write_model(&dir.0, &Tiny::default());
    let model = load(&dir.0).unwrap();
    assert!(model.embed(&[]).unwrap().is_empty());
    let v = model.embed(&["cat", "", "cat", "   "]).unwrap();
    assert_eq!(v.len(), 4 * 36);
    assert_eq!(&v[..36], &v[72..108]);
    assert_eq!(&v[36..72], &v[108..]);
    let norm: f32 = v[..36].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    // Many batches, input order kept.
    let many: Vec<String> = (0..70).map(|i| vec!["sun"; i % 9 + 1].join(" ")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let all = model.embed(&refs).unwrap();
    for i in [0, 33, 69] {
        // Alone it takes the small-matrix path, so only rounding may differ.
        let alone = model.embed(&[refs[i]]).unwrap();
        let diff = all[i * 36..(i + 1) * 36].iter().zip(&alone).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-5, "row {i}: {diff}");
    }
}

#[test]
fn folders_without_sentence_transformers_files() {
    let dir = temp_dir("plain");
    let t = Tiny { normalize: false, ..Tiny::default() };
    let w = write_model(&dir.0, &t);
    for f in [MODULES_FILE, ST_CONFIG_FILE] {
        std::fs::remove_file(dir.0.join(f)).unwrap();
    }
    std::fs::remove_dir_all(dir.0.join("1_Pooling")).unwrap();
    // Transformer + mean pooling, no normalisation; max length from the position table.
    let model = load(&dir.0).unwrap();
    assert_eq!(model.max_seq_length(), 80);
    check_against_reference(&t, &model, &w);
    write_json(&dir.0.join(TOKENIZER_CONFIG_FILE), &serde_json::json!({"model_max_length": 50}));
    assert_eq!(load(&dir.0).unwrap().max_seq_length(), 50);
    write_json(&dir.0.join(TOKENIZER_CONFIG_FILE), &serde_json::json!({"model_max_length": 1e30}));
    assert_eq!(load(&dir.0).unwrap().max_seq_length(), 80);
}

fn load_err(dir: &Path) -> Error {
    let err = load(dir).unwrap_err();
    assert!(inspect(dir).is_err() || matches!(err, Error::InvalidConfig(_)), "inspect accepted it: {err}");
    err
}

fn expect_load_error(dir: &Path, file: &str, needle: &str) {
    match load_err(dir) {
        Error::ModelLoad { path, reason } => {
            assert_eq!(path, dir.join(file), "{reason}");
            assert!(reason.contains(needle), "{reason:?} does not contain {needle:?}");
        }
        other => panic!("{file}: not a load error: {other}"),
    }
}

#[test]
fn bad_config_files_name_the_file() {
    let dir = temp_dir("bad");
    let t = Tiny::default();
    write_model(&dir.0, &t);
    let config = std::fs::read(dir.0.join(CONFIG_FILE)).unwrap();
    let patch = |f: &str, v: serde_json::Value| write_json(&dir.0.join(f), &v);

    std::fs::write(dir.0.join(CONFIG_FILE), b"{\"model_type\": ").unwrap();
    expect_load_error(&dir.0, CONFIG_FILE, "not valid JSON");
    std::fs::remove_file(dir.0.join(CONFIG_FILE)).unwrap();
    expect_load_error(&dir.0, CONFIG_FILE, "");
    let base: serde_json::Value = serde_json::from_slice(&config).unwrap();
    let with = |k: &str, v: serde_json::Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    patch(CONFIG_FILE, with("num_attention_heads", 5.into()));
    expect_load_error(&dir.0, CONFIG_FILE, "multiple of num_attention_heads");
    patch(CONFIG_FILE, with("hidden_size", 0.into()));
    expect_load_error(&dir.0, CONFIG_FILE, "hidden_size is 0");
    patch(CONFIG_FILE, with("hidden_size", (-3).into()));
    expect_load_error(&dir.0, CONFIG_FILE, "hidden_size is -3");
    patch(CONFIG_FILE, with("vocab_size", serde_json::Value::Null));
    expect_load_error(&dir.0, CONFIG_FILE, "vocab_size is missing");
    patch(CONFIG_FILE, with("layer_norm_eps", "tiny".into()));
    expect_load_error(&dir.0, CONFIG_FILE, "layer_norm_eps");
    patch(CONFIG_FILE, with("hidden_size", 48.into()));
    expect_load_error(&dir.0, &format!("1_Pooling/{CONFIG_FILE}"), "hidden size 48");
    patch(CONFIG_FILE, with("intermediate_size", 80.into()));
    expect_load_error(&dir.0, WEIGHTS_FILE, "expected [80, 36]");
    patch(CONFIG_FILE, with("num_hidden_layers", 3.into()));
    expect_load_error(&dir.0, WEIGHTS_FILE, "missing tensor \"encoder.layer.2.");
    patch(CONFIG_FILE, with("hidden_act", "mish".into()));
    assert!(matches!(load_err(&dir.0), Error::NotSupported(m) if m.contains("mish")));
    patch(CONFIG_FILE, with("model_type", "roberta".into()));
    assert!(matches!(load_err(&dir.0), Error::NotSupported(m) if m.contains("roberta")));
    patch(CONFIG_FILE, with("position_embedding_type", "relative_key".into()));
    assert!(matches!(load_err(&dir.0), Error::NotSupported(m) if m.contains("relative_key")));
    patch(CONFIG_FILE, base.clone());
    assert!(load(&dir.0).is_ok());

    patch(ST_CONFIG_FILE, serde_json::json!({"max_seq_length": 81}));
    expect_load_error(&dir.0, ST_CONFIG_FILE, "max_seq_length 81");
    patch(ST_CONFIG_FILE, serde_json::json!({"max_seq_length": "long"}));
    expect_load_error(&dir.0, ST_CONFIG_FILE, "invalid type");
    patch(ST_CONFIG_FILE, serde_json::json!({"max_seq_length": 64}));

    let pooling = format!("1_Pooling/{CONFIG_FILE}");
    patch(&pooling, serde_json::json!({"word_embedding_dimension": 35, "pooling_mode_mean_tokens": true}));
    expect_load_error(&dir.0, &pooling, "word_embedding_dimension 35");
    patch(&pooling, serde_json::json!({"word_embedding_dimension": 36}));
    expect_load_error(&dir.0, &pooling, "no pooling mode");
    std::fs::remove_file(dir.0.join(&pooling)).unwrap();
    expect_load_error(&dir.0, &pooling, "");
    patch(&pooling, t.pooling.clone());

    let modules: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.0.join(MODULES_FILE)).unwrap()).unwrap();
    let mut dense = modules.clone();
    dense
        .as_array_mut()
        .unwrap()
        .insert(2, serde_json::json!({"path": "2_Dense", "type": "sentence_transformers.models.Dense"}));
    patch(MODULES_FILE, dense);
    assert!(matches!(load_err(&dir.0), Error::NotSupported(m) if m.contains("Dense")));
    let mut escape = modules.clone();
    escape[1]["path"] = "../elsewhere".into();
    patch(MODULES_FILE, escape);
    expect_load_error(&dir.0, MODULES_FILE, "leaves the model folder");
    patch(MODULES_FILE, serde_json::json!({"not": "a list"}));
    expect_load_error(&dir.0, MODULES_FILE, "invalid type");
    patch(MODULES_FILE, modules);

    std::fs::write(dir.0.join(TOKENIZER_FILE), b"{}").unwrap();
    let err = load(&dir.0).unwrap_err();
    assert!(matches!(&err, Error::ModelLoad { path, .. } if *path == dir.0.join(TOKENIZER_FILE)), "{err}");
}

#[test]
fn bad_weights_name_the_file_and_tensor() {
    let dir = temp_dir("weights");
    let t = Tiny::default();
    let w = write_model(&dir.0, &t);
    let path = dir.0.join(WEIGHTS_FILE);
    let good = std::fs::read(&path).unwrap();

    std::fs::write(&path, &good[..good.len() - 3]).unwrap();
    expect_load_error(&dir.0, WEIGHTS_FILE, "past the end");
    std::fs::write(&path, &good[..4]).unwrap();
    expect_load_error(&dir.0, WEIGHTS_FILE, "too small");
    std::fs::remove_file(&path).unwrap();
    expect_load_error(&dir.0, WEIGHTS_FILE, "");

    // A tensor missing, one with the wrong shape, one of an integer dtype.
    let named = |skip: &str, reshape: &str, dtype_of: &str| {
        let encoded: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = w
            .iter()
            .filter(|(n, _)| n.as_str() != skip)
            .map(|(n, (s, v))| {
                let mut s = s.clone();
                if n == reshape {
                    s = vec![s.iter().product()];
                }
                let dtype = if n == dtype_of { Dtype::I32 } else { Dtype::F32 };
                (n.clone(), s, writer::f32_bytes(v), dtype)
            })
            .collect();
        let tensors: Vec<(&str, Dtype, &[usize], &[u8])> =
            encoded.iter().map(|(n, s, b, d)| (n.as_str(), *d, s.as_slice(), b.as_slice())).collect();
        std::fs::write(&path, writer::write(&tensors, &[])).unwrap();
    };
    named("encoder.layer.1.output.dense.bias", "", "");
    expect_load_error(&dir.0, WEIGHTS_FILE, "missing tensor \"encoder.layer.1.output.dense.bias\"");
    named("", "encoder.layer.0.attention.self.key.weight", "");
    expect_load_error(&dir.0, WEIGHTS_FILE, "has shape [1296], expected [36, 36]");
    named("", "", "embeddings.LayerNorm.bias");
    assert!(matches!(load_err(&dir.0), Error::NotSupported(m) if m.contains("I32")));
    named("", "", "");
    assert!(load(&dir.0).is_ok());
}

#[test]
fn bad_context_lengths() {
    let dir = temp_dir("ctx");
    write_model(&dir.0, &Tiny::default());
    for bad in [0, 1, 65] {
        let err = load_with(&dir.0, true, Some(bad)).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{bad}: {err}");
    }
}

#[test]
fn cancelling_stops_at_once() {
    let dir = temp_dir("cancel");
    write_model(&dir.0, &Tiny::default());
    for try_mmap in [true, false] {
        let mut calls = Vec::new();
        let mut cb = |v: f32| -> std::result::Result<(), BoxError> {
            calls.push(v);
            if calls.len() == 2 {
                Err("enough".into())
            } else {
                Ok(())
            }
        };
        let mut progress = Progress::new(Some(&mut cb));
        let opts = EmbeddingLoadOptions { try_mmap, context_length: None };
        let err = EmbeddingModel::load(&dir.0, &opts, &mut progress).unwrap_err();
        assert!(matches!(err, Error::Cancelled(_)), "{err}");
        assert_eq!(calls.len(), 2, "no callback after the one that failed");
    }
}

#[test]
fn models_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<EmbeddingModel>();
    // And usable from several threads at once.
    let dir = temp_dir("threads");
    write_model(&dir.0, &Tiny::default());
    let model = Arc::new(load(&dir.0).unwrap());
    let want = model.embed(&["the red cat sat"]).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let model = model.clone();
            let want = want.clone();
            s.spawn(move || assert_eq!(model.embed(&["the red cat sat"]).unwrap(), want));
        }
    });
}

#[test]
fn half_conversion_is_exact() {
    for (bits, want) in [
        (0x0000u16, 0.0f32),
        (0x8000, -0.0),
        (0x3c00, 1.0),
        (0xc000, -2.0),
        (0x3555, 0.333_251_95),
        (0x7bff, 65504.0),
        (0x0400, 6.103_515_6e-5),
        (0x0001, 5.960_464_5e-8),
        (0x83ff, -6.097_555e-5),
        (0x7c00, f32::INFINITY),
        (0xfc00, f32::NEG_INFINITY),
    ] {
        assert_eq!(f16_to_f32(bits).to_bits(), want.to_bits(), "{bits:#06x}");
    }
    assert!(f16_to_f32(0x7e00).is_nan());
    // Every finite half survives f32 and back through the exact encoder used above.
    for bits in 0x0400u16..0x7c00 {
        assert_eq!(f32_to_f16_exact(f16_to_f32(bits)), bits);
    }
}
