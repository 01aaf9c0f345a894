//! A sentence-transformers folder, read the way sentence-transformers reads it: `modules.json` lists the
//! pipeline (Transformer → Pooling → optional Normalize), `config.json` the encoder, `sentence_bert_config.json`
//! `max_seq_length` and `do_lower_case`, `1_Pooling/config.json` the pooling modes. Small files only: no weights.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::pooling::Pooling;
use super::EmbeddingFolderInfo;
use crate::error::{Error, Result};
use crate::formats::safetensors::{Dtype, SafetensorsHeader};
use crate::kernels::f32_ops::Activation;

/// Small JSON config files larger than this are refused (real ones are a few kB).
const MAX_CONFIG_BYTES: u64 = 16 << 20;

pub(super) const CONFIG_FILE: &str = "config.json";
pub(super) const WEIGHTS_FILE: &str = "model.safetensors";
pub(super) const TOKENIZER_FILE: &str = "tokenizer.json";
pub(super) const MODULES_FILE: &str = "modules.json";
pub(super) const ST_CONFIG_FILE: &str = "sentence_bert_config.json";
pub(super) const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// The encoder hyper-parameters we use, validated.
#[derive(Debug, Clone)]
pub(super) struct BertConfig {
    pub(super) vocab_size: usize,
    pub(super) hidden_size: usize,
    pub(super) num_hidden_layers: usize,
    pub(super) num_attention_heads: usize,
    pub(super) intermediate_size: usize,
    pub(super) activation: Activation,
    pub(super) max_position_embeddings: usize,
    pub(super) type_vocab_size: usize,
    pub(super) layer_norm_eps: f32,
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
pub(super) struct Folder {
    pub(super) architecture: String,
    pub(super) bert: BertConfig,
    pub(super) max_seq_length: usize,
    pub(super) do_lower_case: bool,
    pub(super) pooling: Pooling,
    pub(super) normalize: bool,
    pub(super) weights_path: PathBuf,
    pub(super) tokenizer_path: PathBuf,
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
    pub(super) fn read(dir: &Path) -> Result<Folder> {
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

    pub(super) fn dim(&self) -> usize {
        self.pooling.modes() * self.bert.hidden_size
    }

    pub(super) fn info(&self, header: &SafetensorsHeader) -> Result<EmbeddingFolderInfo> {
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

pub(super) fn is_float(d: Dtype) -> bool {
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
