//! The models directory: `<publisher>/<repo>/<files>` as LM Studio lays it out. Finds models, reads
//! only their headers, and resolves keys (exact, unique alias, absolute path).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::formats::gguf::{self, Value};
use crate::models::bert;

/// How many close matches a "not found" error lists.
const SUGGESTIONS: usize = 3;

/// LLM or embedding model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// A language model (GGUF).
    Llm,
    /// A sentence-embedding model (safetensors folder).
    Embedding,
}

impl ModelKind {
    /// "llm" or "embedding".
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Llm => "llm",
            ModelKind::Embedding => "embedding",
        }
    }

    /// Parse "llm" / "embedding".
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "llm" => Ok(ModelKind::Llm),
            "embedding" => Ok(ModelKind::Embedding),
            other => Err(Error::InvalidConfig(format!("model kind {other:?} is not \"llm\" or \"embedding\""))),
        }
    }
}

/// File format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFormat {
    /// One `.gguf` file.
    Gguf,
    /// A folder with `config.json` and `*.safetensors`.
    Safetensors,
}

impl ModelFormat {
    /// "gguf" or "safetensors".
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Gguf => "gguf",
            ModelFormat::Safetensors => "safetensors",
        }
    }
}

/// A model found in the catalog, described from its headers.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    /// `publisher/repo` (or `publisher/repo/file.gguf`, or an absolute path).
    pub model_key: String,
    /// LLM or embedding.
    pub kind: ModelKind,
    /// GGUF or safetensors.
    pub format: ModelFormat,
    /// The GGUF file, or the safetensors folder.
    pub path: PathBuf,
    /// The file that holds the weights.
    pub weights_path: PathBuf,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// e.g. "llama", "bert".
    pub architecture: String,
    /// Parameter count, e.g. "135M".
    pub params_string: String,
    /// Parameter count.
    pub params: u64,
    /// e.g. "Q4_1", "F32".
    pub quantization: String,
    /// Trained context length (max tokens for embedding models).
    pub max_context_length: usize,
    /// `general.name`, or the repo name.
    pub display_name: String,
    /// Whether the chat template mentions tools.
    pub trained_for_tool_use: bool,
    /// Bytes of tensor data.
    pub weights_bytes: u64,
}

/// "135M", "1.5B".
pub fn params_string(n: u64) -> String {
    let (v, unit) = if n >= 1_000_000_000 { (n as f64 / 1e9, "B") } else { (n as f64 / 1e6, "M") };
    if v >= 10.0 || v.fract() < 0.05 {
        format!("{v:.0}{unit}")
    } else {
        format!("{v:.1}{unit}")
    }
}

/// A place in the models directory that holds (or should hold) one model.
#[derive(Debug, Clone)]
struct Candidate {
    key: String,
    path: PathBuf,
    format: Option<ModelFormat>,
}

fn is_gguf(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        && !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("mmproj"))
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    v.sort();
    v
}

/// The candidates in one folder, keyed under `key`.
fn folder_candidates(key: &str, dir: &Path) -> Vec<Candidate> {
    let files = sorted_entries(dir);
    let ggufs: Vec<&PathBuf> = files.iter().filter(|p| is_gguf(p)).collect();
    let has_safetensors = files.iter().any(|p| p.extension().is_some_and(|e| e == "safetensors"));
    match ggufs.len() {
        0 if has_safetensors && dir.join("config.json").is_file() => {
            vec![Candidate { key: key.into(), path: dir.into(), format: Some(ModelFormat::Safetensors) }]
        }
        // No weights: not a model. Only an explicit path to it gets a load error saying so.
        0 => vec![Candidate { key: key.into(), path: dir.into(), format: None }],
        1 => vec![Candidate { key: key.into(), path: ggufs[0].clone(), format: Some(ModelFormat::Gguf) }],
        _ => ggufs
            .into_iter()
            .map(|p| Candidate {
                key: format!("{key}/{}", p.file_name().unwrap_or_default().to_string_lossy()),
                path: p.clone(),
                format: Some(ModelFormat::Gguf),
            })
            .collect(),
    }
}

fn scan(models_dir: &Path) -> Vec<Candidate> {
    let mut out = Vec::new();
    for publisher in sorted_entries(models_dir).into_iter().filter(|p| p.is_dir()) {
        for repo in sorted_entries(&publisher).into_iter().filter(|p| p.is_dir()) {
            let key = format!(
                "{}/{}",
                publisher.file_name().unwrap_or_default().to_string_lossy(),
                repo.file_name().unwrap_or_default().to_string_lossy()
            );
            out.extend(folder_candidates(&key, &repo).into_iter().filter(|c| c.format.is_some()));
        }
    }
    out
}

/// Lowercased, without a repo's `-GGUF` suffix: LM Studio's short model keys match these.
fn normalize(key: &str) -> String {
    let k = key.to_lowercase();
    let parts: Vec<String> = k
        .split('/')
        .map(|p| p.strip_suffix("-gguf").or_else(|| p.strip_suffix("_gguf")).unwrap_or(p).to_string())
        .collect();
    parts.join("/")
}

/// Whether `alias` is a suffix of `key` that starts at a word boundary.
fn is_alias(alias: &str, key: &str) -> bool {
    let (a, k) = (normalize(alias), normalize(key));
    if a.is_empty() || !k.ends_with(&a) {
        return false;
    }
    let start = k.len() - a.len();
    start == 0 || k[..start].ends_with(['/', '-', '_', '.'])
}

fn describe_gguf(c: &Candidate, size: u64) -> Result<CatalogEntry> {
    let h = gguf::read_summary(&c.path)?;
    let arch = h.get("general.architecture").and_then(Value::as_str).unwrap_or("unknown").to_string();
    let (params, quantization) = (h.param_count(), h.quantization());
    let max_ctx = h.arch_get("context_length").and_then(Value::as_u64).unwrap_or(0) as usize;
    let template = h.get("tokenizer.chat_template").and_then(Value::as_str).unwrap_or("");
    Ok(CatalogEntry {
        model_key: c.key.clone(),
        kind: ModelKind::Llm,
        format: ModelFormat::Gguf,
        path: c.path.clone(),
        weights_path: c.path.clone(),
        size_bytes: size,
        display_name: h.get("general.name").and_then(Value::as_str).map_or_else(|| repo_name(&c.key), str::to_string),
        architecture: arch,
        params_string: params_string(params),
        params,
        quantization,
        max_context_length: max_ctx,
        trained_for_tool_use: template.contains("tools"),
        weights_bytes: h.tensor_bytes(),
    })
}

fn repo_name(key: &str) -> String {
    key.rsplit('/').find(|s| !s.is_empty()).unwrap_or(key).to_string()
}

fn describe(c: &Candidate) -> Result<CatalogEntry> {
    match c.format {
        None => {
            Err(Error::load(&c.path, "no model weights here (expected a .gguf file, or config.json + *.safetensors)"))
        }
        Some(ModelFormat::Gguf) => {
            let size = std::fs::metadata(&c.path).map_err(|e| Error::load(&c.path, e.to_string()))?.len();
            describe_gguf(c, size)
        }
        Some(ModelFormat::Safetensors) => {
            let info = bert::inspect(&c.path).map_err(|e| e.with_path(&c.path))?;
            let size = std::fs::metadata(&info.weights_path).map(|m| m.len()).unwrap_or(info.weights_bytes);
            Ok(CatalogEntry {
                model_key: c.key.clone(),
                kind: ModelKind::Embedding,
                format: ModelFormat::Safetensors,
                path: c.path.clone(),
                weights_path: info.weights_path.clone(),
                size_bytes: size,
                architecture: info.architecture.clone(),
                params_string: params_string(info.params),
                params: info.params,
                quantization: info.dtype.clone(),
                max_context_length: info.max_seq_length,
                display_name: repo_name(&c.key),
                trained_for_tool_use: false,
                weights_bytes: info.weights_bytes,
            })
        }
    }
}

/// Headers are re-read only when a file's size or mtime changes.
type CacheKey = (PathBuf, u64, Option<SystemTime>);

/// The catalog of one models directory.
#[derive(Debug)]
pub struct Catalog {
    dir: PathBuf,
    cache: Mutex<HashMap<CacheKey, CatalogEntry>>,
    /// Serve only what lies inside `dir` (for the HTTP server): no absolute paths, and no model whose files
    /// a symlink leads outside, so a request can never make the process open a file elsewhere.
    confined: bool,
}

/// How deep a confined catalog looks into a model folder for symlinks that lead out (`1_Pooling/config.json`).
const CONFINED_SCAN_DEPTH: usize = 2;

/// Whether every file of `path` (a file, or a folder to `depth` levels) resolves to a place inside `root`.
fn resolves_inside(root: &Path, path: &Path, depth: usize) -> bool {
    let Ok(target) = path.canonicalize() else { return false };
    if !target.starts_with(root) {
        return false;
    }
    if !target.is_dir() {
        return true;
    }
    depth > 0 && sorted_entries(path).iter().all(|p| resolves_inside(root, p, depth - 1))
}

impl Catalog {
    /// A catalog over `dir` (which need not exist yet).
    pub fn new(dir: PathBuf) -> Self {
        Catalog { dir, cache: Mutex::new(HashMap::new()), confined: false }
    }

    /// A catalog over `dir` that knows only the models inside it: keys resolve to models whose files all
    /// lie inside `dir` once symlinks are resolved; absolute paths and `..` are not keys.
    pub fn confined(dir: PathBuf) -> Self {
        Catalog { dir, cache: Mutex::new(HashMap::new()), confined: true }
    }

    /// Whether a model at `path` may be used through this catalog (always, unless it is confined).
    pub fn contains(&self, path: &Path) -> bool {
        !self.confined || self.dir.canonicalize().is_ok_and(|root| resolves_inside(&root, path, CONFINED_SCAN_DEPTH))
    }

    fn candidates(&self) -> Vec<Candidate> {
        let all = scan(&self.dir);
        if !self.confined {
            return all;
        }
        let Ok(root) = self.dir.canonicalize() else { return Vec::new() };
        all.into_iter().filter(|c| resolves_inside(&root, &c.path, CONFINED_SCAN_DEPTH)).collect()
    }

    /// The models directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn describe_cached(&self, c: &Candidate) -> Result<CatalogEntry> {
        let stamp_path = match c.format {
            Some(ModelFormat::Safetensors) => c.path.join("config.json"),
            _ => c.path.clone(),
        };
        let meta = std::fs::metadata(&stamp_path).ok();
        let key = (c.path.clone(), meta.as_ref().map_or(0, |m| m.len()), meta.and_then(|m| m.modified().ok()));
        if let Some(e) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if e.model_key == c.key {
                return Ok(e.clone());
            }
        }
        let entry = describe(c)?;
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, entry.clone());
        Ok(entry)
    }

    /// Every model whose headers parse (broken ones are left out of the list; loading them says why).
    pub fn list(&self, kind: Option<ModelKind>) -> Vec<CatalogEntry> {
        self.candidates()
            .iter()
            .filter_map(|c| self.describe_cached(c).ok())
            .filter(|e| kind.is_none_or(|k| e.kind == k))
            .collect()
    }

    /// Resolve a key: an absolute path, an exact model key, or a unique alias (case-insensitive suffix).
    pub fn resolve(&self, key: &str) -> Result<CatalogEntry> {
        let key = key.trim();
        if key.is_empty() {
            return Err(Error::InvalidConfig("the model key is empty".into()));
        }
        let as_path = Path::new(key);
        if self.confined && (as_path.is_absolute() || key.split(['/', '\\']).any(|s| s == "..") || key.contains('\0')) {
            return Err(Error::ModelNotFound { key: key.into(), suggestions: Vec::new() });
        }
        if as_path.is_absolute() {
            return self.resolve_path(as_path);
        }
        let candidates = self.candidates();
        let exact: Vec<&Candidate> = candidates.iter().filter(|c| c.key.eq_ignore_ascii_case(key)).collect();
        let matches: Vec<&Candidate> =
            if exact.len() == 1 { exact } else { candidates.iter().filter(|c| is_alias(key, &c.key)).collect() };
        match matches.as_slice() {
            [one] => self.describe_cached(one),
            [] => Err(Error::ModelNotFound { key: key.into(), suggestions: closest(key, &candidates) }),
            many => Err(Error::AmbiguousKey { key: key.into(), matches: many.iter().map(|c| c.key.clone()).collect() }),
        }
    }

    fn resolve_path(&self, path: &Path) -> Result<CatalogEntry> {
        if !path.exists() {
            return Err(Error::ModelNotFound { key: path.display().to_string(), suggestions: Vec::new() });
        }
        // A path to a model of the catalog is that model, under its key (so `model(key)` finds it loaded).
        if let (Ok(target), Ok(root)) = (path.canonicalize(), self.dir.canonicalize()) {
            if target.starts_with(&root) {
                let same = |c: &&Candidate| {
                    c.path.canonicalize().is_ok_and(|p| p == target)
                        || (c.format == Some(ModelFormat::Gguf) && c.path.parent().is_some_and(|d| d == target))
                };
                let found: Vec<Candidate> = scan(&self.dir).iter().filter(same).cloned().collect();
                if let [one] = found.as_slice() {
                    return self.describe_cached(one);
                }
            }
        }
        let key = path.display().to_string();
        let c = if path.is_dir() {
            let mut found = folder_candidates(&key, path);
            if found.len() > 1 {
                return Err(Error::AmbiguousKey { key, matches: found.into_iter().map(|c| c.key).collect() });
            }
            found.remove(0)
        } else {
            Candidate { key, path: path.into(), format: Some(ModelFormat::Gguf) }
        };
        self.describe_cached(&c)
    }

    /// Close matches for an unknown key, best first.
    pub fn suggestions(&self, key: &str) -> Vec<String> {
        closest(key, &self.candidates())
    }
}

fn closest(key: &str, candidates: &[Candidate]) -> Vec<String> {
    let k = normalize(key);
    let mut scored: Vec<(f64, &str)> = candidates
        .iter()
        .map(|c| {
            let n = normalize(&c.key);
            let repo = n.rsplit('/').next().unwrap_or(&n).to_string();
            (strsim::normalized_levenshtein(&k, &n).max(strsim::normalized_levenshtein(&k, &repo)), c.key.as_str())
        })
        .filter(|(s, _)| *s > 0.3)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(SUGGESTIONS).map(|(_, k)| k.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases() {
        assert!(is_alias("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"));
        assert!(is_alias("all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"));
        assert!(is_alias("instruct", "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"));
        assert!(!is_alias("struct", "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"));
        assert!(!is_alias("", "a/b"));
        assert_eq!(params_string(134_515_008), "135M");
        assert_eq!(params_string(1_500_000_000), "1.5B");
    }
}
