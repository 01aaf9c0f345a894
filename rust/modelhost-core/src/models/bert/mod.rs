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
//! `model.safetensors`, whose pages are not read at load but fault in on first use (half of MiniLM is the
//! word-embedding table, read a few rows per request; see `weights::materialise`), and with
//! `try_mmap: false` views into one owned copy of the file. Only tensors that need a conversion (F16, BF16,
//! F64, or misaligned data) are copied. Loading therefore costs the page-table work and the tokenizer, not a
//! copy of the weights. A file truncated while it is mapped makes the next read of a lost page fault: the
//! SIGBUS guard (`storage::sigbus`) turns that into zeros and a `ModelLoad` error on the request.
//!
//! The forward pass is our own, on `gemm` (the matmul kernel candle uses on the CPU) plus small fused
//! kernels for layer norm, GELU, softmax and attention, because candle-transformers' `BertModel` pads
//! every batch, allocates a tensor per op and packs the weights for every matmul, even for one short
//! sentence, where streaming each weight row once (`kernels::f32_matmul`) does far less work. On CPUs with
//! AVX-512 the whole encoder runs on `kernels::f32_avx512`, chosen at run time as torch's oneDNN chooses its
//! kernels; the first request packs the layers' matrices for it (a copy, about the size of the layers) and
//! releases the mapped pages they came from, so RSS holds them once.
//! `tests/minilm_embedding.rs` checks it against sentence-transformers and has the timing report.

mod folder;
mod forward;
mod pooling;
#[cfg(test)]
mod tests;
mod weights;

use std::path::{Path, PathBuf};
#[cfg(target_arch = "x86_64")]
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(target_arch = "x86_64")]
use std::sync::OnceLock;
use std::sync::{Arc, Mutex, TryLockError};

use crate::error::{Error, Result};
use crate::formats::safetensors as st;
use crate::kernels::Pass;
use crate::storage::{self, FileBytes, MappedFile, Progress};
use crate::text::EmbeddingTokenizer;
use folder::Folder;
#[cfg(target_arch = "x86_64")]
use forward::PanelWeights;
use forward::{forward, Matrices, Scratch};
use pooling::{normalize, pool};
use weights::{load_weights, plan_weights, BertView, BertWeights, Planner};

/// sentence-transformers' default `encode` batch size.
const BATCH_SIZE: usize = 32;
/// Texts tokenized per call while preparing a request, so tokenizer scratch stays bounded.
const TOKENIZE_GROUP: usize = 1024;
/// Activations kept between requests at most (32 sentences of ~45 tokens on MiniLM); larger ones are freed.
const KEEP_SCRATCH_BYTES: usize = 32 << 20;
/// Share of the progress bar spent reading the file when `try_mmap` is false.
const READ_SHARE: f32 = 0.8;

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

/// Whether the first request packs the layers' matrices for the AVX-512 kernels (this CPU has AVX-512F), a copy
/// of about the layers' size that the memory estimate counts where the file's own copy stays (`tryMmap: false`).
pub fn packs_layers() -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::kernels::f32_avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A loaded embedding model. `Send + Sync`: requests only read it.
pub struct EmbeddingModel {
    folder: Folder,
    info: EmbeddingFolderInfo,
    tokenizer: EmbeddingTokenizer,
    /// Tokens per input, special tokens included (the applied context length).
    max_tokens: usize,
    bytes: FileBytes,
    weights: BertWeights,
    /// The last request's activations, kept for the next one while at most `KEEP_SCRATCH_BYTES` (so a stream of
    /// batches does not fault in fresh pages each call); a request that finds it in use takes its own.
    scratch: Mutex<Scratch>,
    /// The layers' matrices packed for the AVX-512 kernels, made by the first request that runs them (so a load
    /// stays a mapping), then shared by every request and instance; the mapped pages they came from are
    /// released.
    #[cfg(target_arch = "x86_64")]
    panel_weights: OnceLock<PanelWeights>,
    /// Set while a request packs them: the requests that come meanwhile run on the rows in place rather than pack
    /// a copy each or wait (a wait inside the thread pool could be the packer's own thread).
    #[cfg(target_arch = "x86_64")]
    packing: AtomicBool,
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
        Ok(EmbeddingModel {
            folder,
            info,
            tokenizer,
            max_tokens,
            bytes,
            weights,
            scratch: Mutex::default(),
            #[cfg(target_arch = "x86_64")]
            panel_weights: OnceLock::new(),
            #[cfg(target_arch = "x86_64")]
            packing: AtomicBool::new(false),
        })
    }

    /// The token ids the model sees for `text`: `[CLS] … [SEP]`, truncated to the context length.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode_batch(&[text], self.folder.do_lower_case)?;
        Ok(ids.pop().map(|(ids, _)| ids).unwrap_or_default())
    }

    /// Embed `texts`: a row-major `(texts.len(), dim)` matrix, rows in input order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<f32>> {
        crate::kernels::run_pass(Pass::Encode, || self.embed_on_pool(texts))
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
        let matrices = self.matrices(&view)?;
        let mut kept = match self.scratch.try_lock() {
            Ok(scratch) => Some(scratch),
            // Only buffers: one a panicking request left behind is as good as new.
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        let mut own = Scratch::default();
        let scratch = kept.as_deref_mut().unwrap_or(&mut own);
        let mut pooled = Vec::new();
        let mut run = || -> Result<()> {
            for batch in order.chunks(BATCH_SIZE) {
                let seqs: Vec<(&[u32], &[u32])> =
                    batch.iter().map(|&i| (encoded[i].0.as_slice(), encoded[i].1.as_slice())).collect();
                self.check_ids(&seqs)?;
                let hidden = forward(&view, matrices, &self.folder.bert, &seqs, scratch);
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
            Ok(())
        };
        let done = run();
        // Kept only while small, whether the request succeeded or failed part way.
        if scratch.bytes() > KEEP_SCRATCH_BYTES {
            *scratch = Scratch::default();
        }
        done.map(|()| out)
    }

    /// The matrices the forward pass runs on, packing them on the first call where the CPU has AVX-512F.
    fn matrices<'a>(&'a self, view: &BertView<'_>) -> Result<Matrices<'a>> {
        #[cfg(target_arch = "x86_64")]
        if packs_layers() {
            if let Some(packed) = self.panel_weights.get() {
                return Ok(Matrices::Panels(packed));
            }
            if !self.packing.swap(true, Ordering::Acquire) {
                let packed = PanelWeights::pack(view, &self.folder.bert);
                // A truncation while packing read zeros: keep nothing made from them.
                let intact = storage::check_intact(&self.bytes);
                if intact.is_ok() {
                    if let FileBytes::Mapped(m) = &self.bytes {
                        m.release_pages(); // the layers are read from the packed copy from now on
                    }
                    let _ = self.panel_weights.set(packed);
                }
                self.packing.store(false, Ordering::Release);
                intact?;
                if let Some(packed) = self.panel_weights.get() {
                    return Ok(Matrices::Panels(packed));
                }
            }
        }
        let _ = view;
        Ok(Matrices::Rows(std::marker::PhantomData))
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
