//! Embedding models: BERT-family encoders in safetensors folders, run as sentence-transformers runs them.
//!
//! A folder is read the way sentence-transformers reads it: `modules.json` lists the pipeline
//! (Transformer → Pooling → optional Normalize), `sentence_bert_config.json` gives `max_seq_length` and
//! `do_lower_case`, `1_Pooling/config.json` the pooling modes, and `tokenizer.json` the tokenizer, with its
//! own truncation (128 for MiniLM) and fixed padding replaced by truncation at `max_seq_length` and no
//! padding at all: a batch is packed without padding tokens, which gives the same vectors as padding to
//! the longest with an attention mask and does none of the padded work.
//!
//! Weights are used in place: with `try_mmap` they are views into the shared read-only mapping of
//! `model.safetensors` (its pages are touched chunk by chunk while loading, so progress is real and the
//! first request does not fault them in), and with `try_mmap: false` views into one owned copy of the
//! file. Only tensors that need a conversion (F16, BF16, F64, or misaligned data) are copied. Loading
//! therefore costs the page-table work and the tokenizer, not a 90 MB copy. The remaining risk of a
//! mapping, as with llama.cpp: another process truncating the file while it is loaded makes the next read
//! of a lost page fault (SIGBUS); the size is checked before the pages are first touched.
//!
//! The forward pass is our own, on `gemm` (the matmul kernel candle uses on the CPU) plus small fused
//! kernels for layer norm, GELU, softmax and attention, because candle-transformers' `BertModel` pads
//! every batch, allocates a tensor per op and packs the weights for every matmul, even for one short
//! sentence, where streaming each weight row once (`kernels::f32_matmul`) is several times faster.
//! `tests/minilm_embedding.rs` checks it against sentence-transformers and has the timing report.

use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::formats::safetensors::{self as st, Dtype, SafeTensorInfo, SafetensorsHeader};
use crate::kernels::f32_ops::{self, layer_norm_row, Activation, MIN_ROWS};
use crate::kernels::{f32_attention, f32_matmul};
use crate::storage::{self, ChunkedLoad, FileBytes, MappedFile, Progress};
use crate::text::EmbeddingTokenizer;

/// sentence-transformers' default `encode` batch size.
const BATCH_SIZE: usize = 32;
/// Texts tokenized per call while preparing a request, so tokenizer scratch stays bounded.
const TOKENIZE_GROUP: usize = 1024;
/// Bytes of weights touched (or converted) between two progress reports.
const LOAD_CHUNK: usize = 1 << 20;
/// Share of the progress bar spent reading the file when `try_mmap` is false.
const READ_SHARE: f32 = 0.8;
/// Small JSON config files larger than this are refused (real ones are a few kB).
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// `torch.nn.functional.normalize`'s epsilon.
const NORMALIZE_EPS: f32 = 1e-12;
/// sentence-transformers clamps the token count of mean pooling to at least this.
const MEAN_MIN_COUNT: f32 = 1e-9;

const CONFIG_FILE: &str = "config.json";
const WEIGHTS_FILE: &str = "model.safetensors";
const TOKENIZER_FILE: &str = "tokenizer.json";
const MODULES_FILE: &str = "modules.json";
const ST_CONFIG_FILE: &str = "sentence_bert_config.json";
const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// Options for [`EmbeddingModel::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingLoadOptions {
    /// Map the weights (zero-copy, shared) rather than read them into owned memory.
    pub try_mmap: bool,
    /// Maximum tokens per input, special tokens included; at most the model's `max_seq_length`.
    /// `None` means `max_seq_length`.
    pub context_length: Option<usize>,
}

impl Default for EmbeddingLoadOptions {
    fn default() -> Self {
        EmbeddingLoadOptions { try_mmap: true, context_length: None }
    }
}

/// What a folder holds, from its headers and small JSON files only (no weights read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingFolderInfo {
    /// `model_type` from `config.json` (`"bert"`).
    pub architecture: String,
    /// Number of floating-point parameters in the weights file.
    pub params: u64,
    /// The weights' floating-point dtype (`"F32"`, `"F16"`, …; the one holding most bytes if mixed).
    pub dtype: String,
    /// Length of the output vectors.
    pub dim: usize,
    /// The model's maximum tokens per input (sentence-transformers' `max_seq_length`).
    pub max_seq_length: usize,
    /// Size of the weights file in bytes.
    pub weights_bytes: u64,
    /// The weights file.
    pub weights_path: PathBuf,
}

/// Read a folder's description in milliseconds: config files plus the safetensors header.
pub fn inspect(dir: &Path) -> Result<EmbeddingFolderInfo> {
    let folder = Folder::read(dir)?;
    let header = st::parse_file_header(&folder.weights_path)?;
    // Names, shapes and dtypes from the header alone, so a broken folder is refused before any load.
    plan_weights(&mut Planner::new(&header, &folder.weights_path)?, &folder.bert)?;
    folder.info(&header)
}

// ---------------------------------------------------------------------------------------------------
// Folder description
// ---------------------------------------------------------------------------------------------------

/// The encoder hyper-parameters we use, validated.
#[derive(Debug, Clone)]
struct BertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    activation: Activation,
    max_position_embeddings: usize,
    type_vocab_size: usize,
    layer_norm_eps: f32,
}

/// sentence-transformers' pooling modes; several may be on, and their outputs are concatenated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
struct Pooling {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

impl Pooling {
    fn mean() -> Self {
        Pooling { pooling_mode_mean_tokens: true, ..Pooling::default() }
    }

    fn modes(&self) -> usize {
        [
            self.pooling_mode_cls_token,
            self.pooling_mode_max_tokens,
            self.pooling_mode_mean_tokens,
            self.pooling_mode_mean_sqrt_len_tokens,
            self.pooling_mode_weightedmean_tokens,
            self.pooling_mode_lasttoken,
        ]
        .iter()
        .filter(|&&on| on)
        .count()
    }
}

#[derive(Deserialize)]
struct PoolingFile {
    word_embedding_dimension: Option<usize>,
    #[serde(flatten)]
    pooling: Pooling,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct StConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

/// Everything about a folder that comes from small files.
#[derive(Debug, Clone)]
struct Folder {
    architecture: String,
    bert: BertConfig,
    max_seq_length: usize,
    do_lower_case: bool,
    pooling: Pooling,
    normalize: bool,
    weights_path: PathBuf,
    tokenizer_path: PathBuf,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let meta = std::fs::metadata(path).map_err(|e| Error::load(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(Error::load(path, "not a regular file"));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(Error::load(path, format!("{} bytes is too large for a config file", meta.len())));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::load(path, e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::load(path, format!("not valid JSON: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(path: &Path, value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::load(path, e.to_string()))
}

/// A module folder named in `modules.json`, which must stay inside the model folder.
fn module_dir(dir: &Path, modules_path: &Path, rel: &str) -> Result<PathBuf> {
    let rel_path = Path::new(rel);
    if rel_path.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Error::load(modules_path, format!("module path {rel:?} leaves the model folder")));
    }
    Ok(dir.join(rel_path))
}

/// The last component of a sentence-transformers module class (`…models.Pooling` → `Pooling`).
fn module_class(kind: &str) -> &str {
    kind.rsplit('.').next().unwrap_or(kind)
}

impl Folder {
    fn read(dir: &Path) -> Result<Folder> {
        if !dir.is_dir() {
            return Err(Error::load(dir, "not a folder"));
        }
        // The pipeline: without modules.json, sentence-transformers builds Transformer + mean Pooling.
        let modules_path = dir.join(MODULES_FILE);
        let mut transformer_dir = dir.to_path_buf();
        let mut pooling = None;
        let mut normalize = false;
        if modules_path.exists() {
            let modules: Vec<ModuleEntry> = from_json(&modules_path, read_json(&modules_path)?)?;
            let classes: Vec<&str> = modules.iter().map(|m| module_class(&m.kind)).collect();
            let supported =
                matches!(classes.as_slice(), ["Transformer", "Pooling"] | ["Transformer", "Pooling", "Normalize"]);
            if !supported {
                return Err(Error::NotSupported(format!(
                    "sentence-transformers pipeline [{}] in {} (supported: Transformer, Pooling, optional Normalize)",
                    classes.join(", "),
                    modules_path.display()
                )));
            }
            transformer_dir = module_dir(dir, &modules_path, &modules[0].path)?;
            let pooling_path = module_dir(dir, &modules_path, &modules[1].path)?.join(CONFIG_FILE);
            let file: PoolingFile = from_json(&pooling_path, read_json(&pooling_path)?)?;
            if file.pooling.modes() == 0 {
                return Err(Error::load(&pooling_path, "no pooling mode is enabled"));
            }
            pooling = Some((file.pooling, file.word_embedding_dimension, pooling_path));
            // The Normalize module has no files; its folder may be absent.
            normalize = classes.len() == 3;
        }

        let config_path = transformer_dir.join(CONFIG_FILE);
        let raw = read_json(&config_path)?;
        let architecture = architecture_of(&raw)
            .ok_or_else(|| Error::load(&config_path, "neither model_type nor architectures says what model this is"))?;
        if architecture != "bert" {
            return Err(Error::NotSupported(format!(
                "embedding architecture {architecture:?} in {} (only BERT is supported)",
                config_path.display()
            )));
        }
        let bert = BertConfig::from_json(&raw, &config_path)?;

        if let Some((_, Some(dim), path)) = &pooling {
            if *dim != bert.hidden_size {
                return Err(Error::load(
                    path,
                    format!(
                        "word_embedding_dimension {dim} does not match the model's hidden size {}",
                        bert.hidden_size
                    ),
                ));
            }
        }
        let pooling = pooling.map_or_else(Pooling::mean, |(p, _, _)| p);

        let st_path = transformer_dir.join(ST_CONFIG_FILE);
        let (st_max, do_lower_case) = if st_path.exists() {
            let c: StConfig = from_json(&st_path, read_json(&st_path)?)?;
            (c.max_seq_length, c.do_lower_case)
        } else {
            (None, false)
        };
        let max_seq_length = match st_max {
            Some(n) => {
                if n == 0 || n > bert.max_position_embeddings {
                    return Err(Error::load(
                        &st_path,
                        format!(
                            "max_seq_length {n} is outside 1..={} (max_position_embeddings)",
                            bert.max_position_embeddings
                        ),
                    ));
                }
                n
            }
            // As transformers: the tokenizer's model_max_length, capped by the position table.
            None => {
                tokenizer_model_max_length(&transformer_dir)?.unwrap_or(usize::MAX).min(bert.max_position_embeddings)
            }
        };
        Ok(Folder {
            architecture,
            bert,
            max_seq_length,
            do_lower_case,
            pooling,
            normalize,
            weights_path: transformer_dir.join(WEIGHTS_FILE),
            tokenizer_path: transformer_dir.join(TOKENIZER_FILE),
        })
    }

    fn dim(&self) -> usize {
        self.pooling.modes() * self.bert.hidden_size
    }

    fn info(&self, header: &SafetensorsHeader) -> Result<EmbeddingFolderInfo> {
        let weights_bytes =
            std::fs::metadata(&self.weights_path).map_err(|e| Error::load(&self.weights_path, e.to_string()))?.len();
        let mut by_dtype: Vec<(Dtype, u64)> = Vec::new();
        let mut params = 0u64;
        for t in header.tensors.iter().filter(|t| is_float(t.dtype)) {
            params += t.numel() as u64;
            match by_dtype.iter_mut().find(|(d, _)| *d == t.dtype) {
                Some((_, bytes)) => *bytes += t.size as u64,
                None => by_dtype.push((t.dtype, t.size as u64)),
            }
        }
        let dtype = by_dtype.iter().max_by_key(|(_, b)| *b).map_or("F32", |(d, _)| d.name()).to_string();
        Ok(EmbeddingFolderInfo {
            architecture: self.architecture.clone(),
            params,
            dtype,
            dim: self.dim(),
            max_seq_length: self.max_seq_length,
            weights_bytes,
            weights_path: self.weights_path.clone(),
        })
    }
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// `model_type`, else a name derived from `architectures[0]` (`BertModel` → `bert`).
fn architecture_of(config: &serde_json::Value) -> Option<String> {
    if let Some(t) = config.get("model_type").and_then(|v| v.as_str()) {
        return Some(t.to_string());
    }
    let arch = config.get("architectures")?.as_array()?.first()?.as_str()?;
    let base = ["ForMaskedLM", "ForPreTraining", "Model"].iter().find_map(|s| arch.strip_suffix(s)).unwrap_or(arch);
    Some(base.to_lowercase())
}

fn tokenizer_model_max_length(dir: &Path) -> Result<Option<usize>> {
    let path = dir.join(TOKENIZER_CONFIG_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let value = read_json(&path)?;
    // Often a huge float (1e30) meaning "no limit".
    Ok(value.get("model_max_length").and_then(|v| v.as_f64()).filter(|v| *v >= 1.0).map(|v| v.min(1e9) as usize))
}

impl BertConfig {
    fn from_json(c: &serde_json::Value, path: &Path) -> Result<BertConfig> {
        let bad = |reason: String| Error::load(path, reason);
        // Each field by hand, so an error names it.
        let size = |name: &str, default: Option<usize>| -> Result<usize> {
            match c.get(name) {
                None | Some(serde_json::Value::Null) => default.ok_or_else(|| bad(format!("{name} is missing"))),
                Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                    Some(0) => Err(bad(format!("{name} is 0"))),
                    Some(n) => Ok(n),
                    None => Err(bad(format!("{name} is {v}, not a positive integer"))),
                },
            }
        };
        let text = |name: &str, default: &'static str| -> Result<String> {
            match c.get(name) {
                None | Some(serde_json::Value::Null) => Ok(default.to_string()),
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(v) => Err(bad(format!("{name} is {v}, not a string"))),
            }
        };
        let vocab_size = size("vocab_size", None)?;
        let hidden_size = size("hidden_size", None)?;
        let num_hidden_layers = size("num_hidden_layers", None)?;
        let num_attention_heads = size("num_attention_heads", None)?;
        let intermediate_size = size("intermediate_size", None)?;
        let max_position_embeddings = size("max_position_embeddings", None)?;
        let type_vocab_size = size("type_vocab_size", Some(2))?;
        if hidden_size % num_attention_heads != 0 {
            return Err(bad(format!(
                "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
            )));
        }
        let layer_norm_eps = match c.get("layer_norm_eps") {
            None | Some(serde_json::Value::Null) => 1e-12,
            Some(v) => match v.as_f64() {
                Some(e) if e.is_finite() && e >= 0.0 => e,
                _ => return Err(bad(format!("layer_norm_eps is {v}, not a finite non-negative number"))),
            },
        };
        let position = text("position_embedding_type", "absolute")?;
        if position != "absolute" {
            return Err(Error::NotSupported(format!(
                "position_embedding_type {position:?} in {} (only \"absolute\")",
                path.display()
            )));
        }
        let activation = match text("hidden_act", "gelu")?.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(Error::NotSupported(format!("hidden_act {other:?} in {}", path.display())));
            }
        };
        Ok(BertConfig {
            vocab_size,
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            intermediate_size,
            activation,
            max_position_embeddings,
            type_vocab_size,
            layer_norm_eps: layer_norm_eps as f32,
        })
    }
}

// ---------------------------------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------------------------------

/// One weight tensor as f32: a view into the file's bytes, or a converted copy.
#[derive(Debug)]
enum Weight {
    /// Byte range of little-endian, 4-byte-aligned f32 data in the model's `FileBytes`.
    View(Range<usize>),
    /// Converted from another dtype, or copied because it was misaligned.
    Owned(Vec<f32>),
}

impl Weight {
    fn get<'a>(&'a self, file: &'a [u8]) -> &'a [f32] {
        match self {
            Weight::Owned(v) => v,
            Weight::View(r) => {
                // Checked when the view was made: in bounds, aligned, a whole number of f32.
                let bytes = &file[r.clone()];
                // SAFETY: every bit pattern is a valid f32, and `align_to` only puts correctly aligned
                // elements in the middle slice.
                let (head, floats, tail) = unsafe { bytes.align_to::<f32>() };
                debug_assert!(head.is_empty() && tail.is_empty());
                floats
            }
        }
    }
}

#[derive(Debug)]
struct LayerWeights {
    q_w: Weight,
    q_b: Weight,
    k_w: Weight,
    k_b: Weight,
    v_w: Weight,
    v_b: Weight,
    o_w: Weight,
    o_b: Weight,
    ln1_g: Weight,
    ln1_b: Weight,
    i_w: Weight,
    i_b: Weight,
    out_w: Weight,
    out_b: Weight,
    ln2_g: Weight,
    ln2_b: Weight,
}

#[derive(Debug)]
struct BertWeights {
    word: Weight,
    position: Weight,
    token_type: Weight,
    ln_g: Weight,
    ln_b: Weight,
    layers: Vec<LayerWeights>,
}

/// The weights resolved to slices for one request.
struct LayerView<'a> {
    q_w: &'a [f32],
    q_b: &'a [f32],
    k_w: &'a [f32],
    k_b: &'a [f32],
    v_w: &'a [f32],
    v_b: &'a [f32],
    o_w: &'a [f32],
    o_b: &'a [f32],
    ln1_g: &'a [f32],
    ln1_b: &'a [f32],
    i_w: &'a [f32],
    i_b: &'a [f32],
    out_w: &'a [f32],
    out_b: &'a [f32],
    ln2_g: &'a [f32],
    ln2_b: &'a [f32],
}

struct BertView<'a> {
    word: &'a [f32],
    position: &'a [f32],
    token_type: &'a [f32],
    ln_g: &'a [f32],
    ln_b: &'a [f32],
    layers: Vec<LayerView<'a>>,
}

impl BertWeights {
    fn view<'a>(&'a self, file: &'a [u8]) -> BertView<'a> {
        BertView {
            word: self.word.get(file),
            position: self.position.get(file),
            token_type: self.token_type.get(file),
            ln_g: self.ln_g.get(file),
            ln_b: self.ln_b.get(file),
            layers: self
                .layers
                .iter()
                .map(|l| LayerView {
                    q_w: l.q_w.get(file),
                    q_b: l.q_b.get(file),
                    k_w: l.k_w.get(file),
                    k_b: l.k_b.get(file),
                    v_w: l.v_w.get(file),
                    v_b: l.v_b.get(file),
                    o_w: l.o_w.get(file),
                    o_b: l.o_b.get(file),
                    ln1_g: l.ln1_g.get(file),
                    ln1_b: l.ln1_b.get(file),
                    i_w: l.i_w.get(file),
                    i_b: l.i_b.get(file),
                    out_w: l.out_w.get(file),
                    out_b: l.out_b.get(file),
                    ln2_g: l.ln2_g.get(file),
                    ln2_b: l.ln2_b.get(file),
                })
                .collect(),
        }
    }
}

/// Picks the tensors the encoder needs out of a header, checking names, shapes and dtypes before
/// any weight byte is touched.
struct Planner<'h> {
    header: &'h SafetensorsHeader,
    path: &'h Path,
    prefix: String,
    wanted: Vec<&'h SafeTensorInfo>,
}

impl<'h> Planner<'h> {
    fn new(header: &'h SafetensorsHeader, path: &'h Path) -> Result<Self> {
        let prefix = ["", "bert.", "model."]
            .into_iter()
            .find(|p| header.tensor(&format!("{p}embeddings.word_embeddings.weight")).is_some())
            .ok_or_else(|| Error::load(path, "no tensor embeddings.word_embeddings.weight: not a BERT checkpoint"))?;
        Ok(Planner { header, path, prefix: prefix.to_string(), wanted: Vec::new() })
    }

    /// The tensor `name` (or, for layer norms, its old `gamma`/`beta` spelling) with shape `shape`.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<usize> {
        let full = format!("{}{name}", self.prefix);
        let legacy = full.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta");
        let info = self
            .header
            .tensor(&full)
            .or_else(|| self.header.tensor(&legacy))
            .ok_or_else(|| Error::load(self.path, format!("missing tensor {full:?}")))?;
        if info.shape != shape {
            return Err(Error::load(
                self.path,
                format!("tensor {:?} has shape {:?}, expected {shape:?}", info.name, info.shape),
            ));
        }
        if !is_float(info.dtype) {
            return Err(Error::NotSupported(format!(
                "tensor {:?} in {} has dtype {} (only F32, F16, BF16 and F64 weights are supported)",
                info.name,
                self.path.display(),
                info.dtype
            )));
        }
        self.wanted.push(info);
        Ok(self.wanted.len() - 1)
    }
}

/// Indices into the planner's list, in the shape of the model.
struct LayerPlan([usize; 16]);

struct BertPlan {
    embeddings: [usize; 5],
    layers: Vec<LayerPlan>,
}

fn plan_weights(planner: &mut Planner<'_>, c: &BertConfig) -> Result<BertPlan> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let embeddings = [
        planner.take("embeddings.word_embeddings.weight", &[c.vocab_size, h])?,
        planner.take("embeddings.position_embeddings.weight", &[c.max_position_embeddings, h])?,
        planner.take("embeddings.token_type_embeddings.weight", &[c.type_vocab_size, h])?,
        planner.take("embeddings.LayerNorm.weight", &[h])?,
        planner.take("embeddings.LayerNorm.bias", &[h])?,
    ];
    let mut layers = Vec::new();
    for l in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{l}.");
        let mut t = |suffix: &str, shape: &[usize]| planner.take(&format!("{p}{suffix}"), shape);
        layers.push(LayerPlan([
            t("attention.self.query.weight", &[h, h])?,
            t("attention.self.query.bias", &[h])?,
            t("attention.self.key.weight", &[h, h])?,
            t("attention.self.key.bias", &[h])?,
            t("attention.self.value.weight", &[h, h])?,
            t("attention.self.value.bias", &[h])?,
            t("attention.output.dense.weight", &[h, h])?,
            t("attention.output.dense.bias", &[h])?,
            t("attention.output.LayerNorm.weight", &[h])?,
            t("attention.output.LayerNorm.bias", &[h])?,
            t("intermediate.dense.weight", &[i, h])?,
            t("intermediate.dense.bias", &[i])?,
            t("output.dense.weight", &[h, i])?,
            t("output.dense.bias", &[h])?,
            t("output.LayerNorm.weight", &[h])?,
            t("output.LayerNorm.bias", &[h])?,
        ]));
    }
    Ok(BertPlan { embeddings, layers })
}

/// Convert little-endian `dtype` elements to f32.
fn convert(dtype: Dtype, src: &[u8], dst: &mut Vec<f32>) {
    match dtype {
        Dtype::F32 => dst.extend(src.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        Dtype::F16 => dst.extend(src.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))),
        Dtype::BF16 => {
            dst.extend(src.chunks_exact(2).map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)))
        }
        Dtype::F64 => dst.extend(src.chunks_exact(8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            f64::from_le_bytes(a) as f32
        })),
        // Refused by the planner.
        _ => {}
    }
}

/// IEEE half → single, exactly (subnormals, infinities and NaNs included).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match exp {
        0 if mant == 0 => sign,
        0 => {
            // Subnormal: mant × 2^-24, exact in f32.
            let v = mant as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        31 => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 112) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// Make the weights usable: views where the bytes are f32, little-endian and aligned, converted
/// copies elsewhere; progress after every view and every converted chunk.
fn materialise(
    bytes: &FileBytes,
    path: &Path,
    wanted: &[&SafeTensorInfo],
    progress: &mut ChunkedLoad<'_, '_>,
) -> Result<(Vec<Weight>, bool)> {
    let data = bytes.as_slice();
    let mut out = Vec::with_capacity(wanted.len());
    let mut any_view = false;
    for info in wanted {
        let range = info.offset..info.offset + info.size;
        // In range: the header was validated against these very bytes.
        let src =
            data.get(range.clone()).ok_or_else(|| Error::load(path, format!("tensor {:?} out of range", info.name)))?;
        let aligned = (src.as_ptr() as usize).is_multiple_of(std::mem::align_of::<f32>());
        if info.dtype == Dtype::F32 && aligned && cfg!(target_endian = "little") {
            // Used in place; the pages fault in on first use. Unlike the LLM's, these are not read in
            // at load: half are the word embeddings, read a few rows per request, and prefaulting the
            // rest measured slower than the kernel's fault-around (load + first embed, warm or cold).
            progress.advance(src.len() as u64)?;
            any_view = true;
            out.push(Weight::View(range));
        } else {
            let elem = info.dtype.bits() / 8;
            let mut v = Vec::new();
            v.try_reserve_exact(info.numel()).map_err(|_| {
                Error::load(path, format!("cannot allocate {} floats for {:?}", info.numel(), info.name))
            })?;
            for chunk in src.chunks(LOAD_CHUNK / elem * elem) {
                convert(info.dtype, chunk, &mut v);
                progress.advance(chunk.len() as u64)?;
            }
            out.push(Weight::Owned(v));
        }
    }
    Ok((out, any_view))
}

// ---------------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------------

/// A loaded embedding model. `Send + Sync`: requests only read it.
pub struct EmbeddingModel {
    folder: Folder,
    info: EmbeddingFolderInfo,
    tokenizer: EmbeddingTokenizer,
    /// Tokens per input, special tokens included (the applied context length).
    max_tokens: usize,
    bytes: FileBytes,
    weights: BertWeights,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("info", &self.info)
            .field("max_tokens", &self.max_tokens)
            .field("mapped", &self.mapped_file().is_some())
            .finish_non_exhaustive()
    }
}

impl EmbeddingModel {
    /// Load a folder. Progress goes over `(0, 1)` as weight chunks land; the caller sends 0.0 before
    /// and 1.0 after. An error from the callback stops the load at once with nothing left allocated or
    /// mapped.
    pub fn load(dir: &Path, opts: &EmbeddingLoadOptions, progress: &mut Progress<'_>) -> Result<Self> {
        let folder = Folder::read(dir)?;
        let max_tokens = match opts.context_length {
            None => folder.max_seq_length,
            Some(n) if (1..=folder.max_seq_length).contains(&n) => n,
            Some(n) => {
                return Err(Error::InvalidConfig(format!(
                    "context length {n} is outside 1..={} for {}",
                    folder.max_seq_length,
                    dir.display()
                )));
            }
        };
        // The tokenizer (a few ms of JSON) loads on a scoped thread while this one maps the weights;
        // the scope joins it whatever happens here.
        let (weights, tokenizer) = std::thread::scope(|scope| {
            let tokenizer = scope.spawn(|| EmbeddingTokenizer::load(&folder.tokenizer_path, max_tokens));
            let weights = load_weights(&folder, opts.try_mmap, progress);
            let tokenizer = tokenizer
                .join()
                .unwrap_or_else(|_| Err(Error::load(&folder.tokenizer_path, "the tokenizer failed to load")));
            (weights, tokenizer)
        });
        let (bytes, weights, header) = weights?;
        let tokenizer = tokenizer?;
        let info = folder.info(&header)?;
        Ok(EmbeddingModel { folder, info, tokenizer, max_tokens, bytes, weights })
    }

    /// The token ids the model sees for `text`: `[CLS] … [SEP]`, truncated to the context length.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode_batch(&[text], self.folder.do_lower_case)?;
        Ok(ids.pop().map(|(ids, _)| ids).unwrap_or_default())
    }

    /// Embed `texts`: a row-major `(texts.len(), dim)` matrix, rows in input order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<f32>> {
        crate::kernels::on_pool(false, || self.embed_on_pool(texts))
    }

    fn embed_on_pool(&self, texts: &[&str]) -> Result<Vec<f32>> {
        let dim = self.dim();
        let mut out = vec![0f32; texts.len() * dim];
        if texts.is_empty() {
            return Ok(out);
        }
        let mut encoded = Vec::with_capacity(texts.len());
        for group in texts.chunks(TOKENIZE_GROUP) {
            encoded.extend(self.tokenizer.encode_batch(group, self.folder.do_lower_case)?);
        }
        // Longest first, as sentence-transformers sorts, so each batch holds similar lengths.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].0.len()));
        let view = self.weights.view(self.bytes.as_slice());
        let max_len = order.first().map_or(0, |&i| encoded[i].0.len());
        let mut scratch = Scratch::new(BATCH_SIZE.min(texts.len()) * max_len, &self.folder.bert);
        let mut pooled = Vec::new();
        for batch in order.chunks(BATCH_SIZE) {
            let seqs: Vec<(&[u32], &[u32])> =
                batch.iter().map(|&i| (encoded[i].0.as_slice(), encoded[i].1.as_slice())).collect();
            self.check_ids(&seqs)?;
            let hidden = forward(&view, &self.folder.bert, &seqs, &mut scratch);
            // Weights are read in place from the mapping: a truncated file reads as zeros, not a result.
            storage::check_intact(&self.bytes)?;
            pool(hidden, &seqs, self.folder.bert.hidden_size, &self.folder.pooling, &mut pooled);
            for (row, &i) in pooled.chunks_exact(dim).zip(batch) {
                let dst = &mut out[i * dim..(i + 1) * dim];
                dst.copy_from_slice(row);
                if self.folder.normalize {
                    normalize(dst);
                }
            }
        }
        Ok(out)
    }

    /// Length of the output vectors.
    pub fn dim(&self) -> usize {
        self.folder.dim()
    }

    /// Maximum tokens per input as applied (the load's context length, at most the model's).
    pub fn max_seq_length(&self) -> usize {
        self.max_tokens
    }

    /// The architecture (`"bert"`).
    pub fn architecture(&self) -> &str {
        &self.folder.architecture
    }

    /// The folder's description, as [`inspect`] gives it.
    pub fn info(&self) -> &EmbeddingFolderInfo {
        &self.info
    }

    /// The shared mapping of the weights file, when loaded with `try_mmap`.
    pub fn mapped_file(&self) -> Option<&Arc<MappedFile>> {
        match &self.bytes {
            FileBytes::Mapped(m) => Some(m),
            FileBytes::Owned(_) => None,
        }
    }

    /// A tokenizer that disagrees with the weights must give an error, not an out-of-bounds read.
    fn check_ids(&self, seqs: &[(&[u32], &[u32])]) -> Result<()> {
        let c = &self.folder.bert;
        for (ids, types) in seqs {
            if ids.is_empty() {
                return Err(Error::InvalidConfig(format!(
                    "a text gives no tokens at all ({} adds no special tokens), so it has no embedding",
                    self.folder.tokenizer_path.display()
                )));
            }
            if ids.len() > c.max_position_embeddings {
                return Err(Error::load(
                    &self.folder.tokenizer_path,
                    format!("produced {} tokens for a model with {} positions", ids.len(), c.max_position_embeddings),
                ));
            }
            if let Some(id) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
                return Err(Error::load(
                    &self.folder.tokenizer_path,
                    format!("token id {id} is outside the model's vocabulary of {}", c.vocab_size),
                ));
            }
            if let Some(t) = types.iter().find(|&&t| t as usize >= c.type_vocab_size) {
                return Err(Error::load(
                    &self.folder.tokenizer_path,
                    format!("token type {t} is outside the model's {} token types", c.type_vocab_size),
                ));
            }
        }
        Ok(())
    }
}

type LoadedWeights = (FileBytes, BertWeights, SafetensorsHeader);

fn load_weights(folder: &Folder, try_mmap: bool, progress: &mut Progress<'_>) -> Result<LoadedWeights> {
    let path = &folder.weights_path;
    let (bytes, base) = if try_mmap {
        (FileBytes::Mapped(storage::map_shared(path)?), 0.0)
    } else {
        (storage::read_owned(path, progress, READ_SHARE)?, READ_SHARE)
    };
    let header = st::parse(bytes.as_slice(), path)?;
    let mut planner = Planner::new(&header, path)?;
    let plan = plan_weights(&mut planner, &folder.bert)?;
    let total: u64 = planner.wanted.iter().map(|t| t.size as u64).sum();
    storage::check_unchanged(&bytes)?;
    let mut chunks = ChunkedLoad::new(progress, total, base, 1.0 - base);
    let (mut loaded, any_view) = materialise(&bytes, path, &planner.wanted, &mut chunks)?;
    if let (FileBytes::Mapped(m), false) = (&bytes, any_view) {
        // Everything was converted into owned memory: the mapped pages are no longer needed.
        m.release_pages();
    }
    storage::check_intact(&bytes)?; // a truncation during the copies above read zeros
    let mut take = |i: usize| std::mem::replace(&mut loaded[i], Weight::Owned(Vec::new()));
    let [word, position, token_type, ln_g, ln_b] = plan.embeddings.map(&mut take);
    let layers = plan
        .layers
        .iter()
        .map(|l| {
            let [q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln1_g, ln1_b, i_w, i_b, out_w, out_b, ln2_g, ln2_b] =
                l.0.map(&mut take);
            LayerWeights { q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln1_g, ln1_b, i_w, i_b, out_w, out_b, ln2_g, ln2_b }
        })
        .collect();
    drop(planner);
    Ok((bytes, BertWeights { word, position, token_type, ln_g, ln_b, layers }, header))
}

// ---------------------------------------------------------------------------------------------------
// Forward pass
// ---------------------------------------------------------------------------------------------------

/// Activations for one batch, sized for the longest batch of the request and reused.
struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    heads: Vec<f32>,
    ctx: Vec<f32>,
    tmp: Vec<f32>,
    inter: Vec<f32>,
}

impl Scratch {
    fn new(tokens: usize, c: &BertConfig) -> Self {
        let h = c.hidden_size;
        Scratch {
            x: vec![0.0; tokens * h],
            qkv: vec![0.0; tokens * 3 * h],
            heads: vec![0.0; tokens * h],
            ctx: vec![0.0; tokens * h],
            tmp: vec![0.0; tokens * h],
            inter: vec![0.0; tokens * c.intermediate_size],
        }
    }
}

/// Embedding sums and their layer norm: `x[t] = LN(word[id] + type[tt] + pos[p])`.
fn embed(w: &BertView<'_>, seqs: &[(&[u32], &[u32])], h: usize, eps: f32, x: &mut [f32]) {
    let tokens: Vec<(u32, u32, usize)> = seqs
        .iter()
        .flat_map(|(ids, types)| ids.iter().zip(types.iter()).enumerate().map(|(p, (&id, &tt))| (id, tt, p)))
        .collect();
    x.par_chunks_mut(h).zip(tokens.par_iter()).with_min_len(MIN_ROWS).for_each(|(row, &(id, tt, p))| {
        let word = &w.word[id as usize * h..][..h];
        let ty = &w.token_type[tt as usize * h..][..h];
        let pos = &w.position[p * h..][..h];
        for (((o, a), b), c) in row.iter_mut().zip(word).zip(ty).zip(pos) {
            *o = (a + b) + c;
        }
        layer_norm_row(row, w.ln_g, w.ln_b, eps);
    });
}

/// Run the encoder over packed sequences (no padding); returns the final hidden states, `[T, hidden]`.
fn forward<'s>(w: &BertView<'_>, c: &BertConfig, seqs: &[(&[u32], &[u32])], s: &'s mut Scratch) -> &'s [f32] {
    let h = c.hidden_size;
    let t: usize = seqs.iter().map(|(ids, _)| ids.len()).sum();
    let eps = c.layer_norm_eps;
    let x = &mut s.x[..t * h];
    embed(w, seqs, h, eps, x);
    let spans: Vec<(usize, usize)> = seqs
        .iter()
        .scan(0, |start, (ids, _)| {
            let span = (*start, ids.len());
            *start += ids.len();
            Some(span)
        })
        .collect();
    let qkv = &mut s.qkv[..t * 3 * h];
    let heads = &mut s.heads[..t * h];
    let ctx = &mut s.ctx[..t * h];
    let tmp = &mut s.tmp[..t * h];
    let inter = &mut s.inter[..t * c.intermediate_size];
    for l in &w.layers {
        f32_matmul::linear(x, t, h, l.q_w, l.q_b, h, qkv, 3 * h, 0);
        f32_matmul::linear(x, t, h, l.k_w, l.k_b, h, qkv, 3 * h, h);
        f32_matmul::linear(x, t, h, l.v_w, l.v_b, h, qkv, 3 * h, 2 * h);
        f32_attention::attention(qkv, &spans, c.num_attention_heads, h, heads, ctx);
        f32_matmul::linear(ctx, t, h, l.o_w, l.o_b, h, tmp, h, 0);
        f32_ops::add_layer_norm(x, tmp, l.ln1_g, l.ln1_b, eps);
        f32_matmul::linear(x, t, h, l.i_w, l.i_b, c.intermediate_size, inter, c.intermediate_size, 0);
        f32_ops::activate(inter, c.activation);
        f32_matmul::linear(inter, t, c.intermediate_size, l.out_w, l.out_b, h, tmp, h, 0);
        f32_ops::add_layer_norm(x, tmp, l.ln2_g, l.ln2_b, eps);
    }
    &s.x[..t * h]
}

/// Pool each sequence's hidden states as sentence-transformers' `Pooling` does, modes concatenated in
/// its order (cls, max, mean, mean_sqrt_len, weightedmean, lasttoken).
fn pool(hidden: &[f32], seqs: &[(&[u32], &[u32])], h: usize, p: &Pooling, out: &mut Vec<f32>) {
    out.clear();
    let mut start = 0;
    for (ids, _) in seqs {
        let rows = &hidden[start * h..(start + ids.len()) * h];
        start += ids.len();
        let n = ids.len();
        if p.pooling_mode_cls_token {
            out.extend_from_slice(&rows[..h]);
        }
        if p.pooling_mode_max_tokens {
            let mut m = vec![f32::NEG_INFINITY; h];
            for row in rows.chunks_exact(h) {
                for (a, &v) in m.iter_mut().zip(row) {
                    *a = a.max(v);
                }
            }
            out.extend(m);
        }
        if p.pooling_mode_mean_tokens || p.pooling_mode_mean_sqrt_len_tokens {
            let mut sum = vec![0f32; h];
            for row in rows.chunks_exact(h) {
                for (a, &v) in sum.iter_mut().zip(row) {
                    *a += v;
                }
            }
            let count = (n as f32).max(MEAN_MIN_COUNT);
            if p.pooling_mode_mean_tokens {
                out.extend(sum.iter().map(|v| v / count));
            }
            if p.pooling_mode_mean_sqrt_len_tokens {
                let root = count.sqrt();
                out.extend(sum.iter().map(|v| v / root));
            }
        }
        if p.pooling_mode_weightedmean_tokens {
            // Position weights 1..=n, as sentence-transformers (right padding).
            let mut sum = vec![0f32; h];
            for (pos, row) in rows.chunks_exact(h).enumerate() {
                let wgt = (pos + 1) as f32;
                for (a, &v) in sum.iter_mut().zip(row) {
                    *a += v * wgt;
                }
            }
            let total = ((n * (n + 1) / 2) as f32).max(MEAN_MIN_COUNT);
            out.extend(sum.iter().map(|v| v / total));
        }
        if p.pooling_mode_lasttoken {
            out.extend_from_slice(&rows[(n - 1) * h..]);
        }
    }
}

/// L2-normalise in place, as `torch.nn.functional.normalize`.
fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(NORMALIZE_EPS);
    for x in v {
        *x /= norm;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::formats::safetensors_writer as writer;
    use crate::kernels::f32_ops::reference::act64;
    use crate::BoxError;

    /// Words of the tiny vocabulary (after the five special tokens).
    const WORDS: &[&str] = &[
        "the", "a", "cat", "dog", "sat", "on", "mat", "and", "ran", "far", "big", "small", "red", "blue", "green",
        "sun", "moon", "star", "sky", "sea", "fish", "bird", "tree", "leaf", "rock", "sand", "wind", "rain", "snow",
        "fire", "##s", "##ing", "##ed", ".", ",", "!",
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
        write_json(
            &dir.join(ST_CONFIG_FILE),
            &serde_json::json!({"max_seq_length": t.max_seq, "do_lower_case": false}),
        );
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
            out.extend(
                (0..h).map(|j| rows.iter().enumerate().map(|(i, r)| r[j] * (i + 1) as f64).sum::<f64>() / total),
            );
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

        let modules: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.0.join(MODULES_FILE)).unwrap()).unwrap();
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
}
