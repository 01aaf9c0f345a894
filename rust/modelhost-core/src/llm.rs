//! Llama-architecture GGUF models on candle's quantized kernels: weights shared by every instance of a
//! file, a KV cache per instance, prompt processing in chunks, sampling, stop strings and streaming.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use rand::distr::{weighted::WeightedIndex, Distribution};
use rand::{rngs::StdRng, SeedableRng};

use crate::error::{Error, Result};
use crate::formats::gguf::{self, GgufHeader, TensorInfo, Value};
use crate::kernels::{QuantKind, QuantMatrix};
use crate::placement::Placement;
use crate::storage::{self, resident_zeros, ChunkedLoad, FileBytes, LockedPages, Progress};
use crate::text::{ChatMessage, ChatTemplate, GgufTokenizer};

/// Hyper-parameters of a llama-architecture model, from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct LlamaParams {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention).
    pub n_head_kv: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// RMS-norm epsilon.
    pub rms_eps: f64,
    /// RoPE base frequency from the file.
    pub rope_freq_base: f64,
    /// RoPE linear frequency scale from the file (1.0 = none).
    pub rope_freq_scale: f64,
    /// Trained context length.
    pub max_context: usize,
    /// Vocabulary size (rows of the output head).
    pub vocab: usize,
}

fn meta_usize(h: &GgufHeader, path: &Path, suffix: &str) -> Result<usize> {
    h.arch_get(suffix)
        .and_then(Value::as_u64)
        .and_then(|v| usize::try_from(v).ok())
        .filter(|&v| v > 0)
        .ok_or_else(|| Error::load(path, format!("metadata <arch>.{suffix} is missing or not a positive integer")))
}

impl LlamaParams {
    /// Read and sanity-check the hyper-parameters.
    pub fn from_header(h: &GgufHeader, path: &Path) -> Result<Self> {
        let arch = h.get("general.architecture").and_then(Value::as_str).unwrap_or("");
        if arch != "llama" {
            return Err(Error::load(
                path,
                format!("architecture {arch:?} is not supported (llama-architecture GGUF only)"),
            ));
        }
        let n_embd = meta_usize(h, path, "embedding_length")?;
        let n_head = meta_usize(h, path, "attention.head_count")?;
        let n_head_kv = h.arch_get("attention.head_count_kv").and_then(Value::as_u64).map_or(n_head, |v| v as usize);
        if n_head_kv == 0 || n_head % n_head_kv != 0 || n_embd % n_head != 0 {
            return Err(Error::load(
                path,
                format!("{n_head} heads, {n_head_kv} kv heads and width {n_embd} do not fit"),
            ));
        }
        let head_dim = n_embd / n_head;
        if head_dim % 2 != 0 {
            return Err(Error::load(path, format!("head size {head_dim} is odd")));
        }
        let embd =
            h.tensor("token_embd.weight").ok_or_else(|| Error::load(path, "tensor token_embd.weight is missing"))?;
        let vocab = embd.dims.get(1).copied().unwrap_or(0);
        // The metadata must agree with the tensors that are really there: a lying block count or width
        // would otherwise size plans and caches from a number nothing backs.
        if embd.dims[0] != n_embd {
            return Err(Error::load(
                path,
                format!("embedding_length {n_embd} does not match token_embd.weight's width {}", embd.dims[0]),
            ));
        }
        let n_layer = meta_usize(h, path, "block_count")?;
        let blocks_present = (0..).take_while(|i| h.tensor(&format!("blk.{i}.attn_norm.weight")).is_some()).count();
        if n_layer != blocks_present {
            return Err(Error::load(path, format!("block_count {n_layer} but the file has {blocks_present} blocks")));
        }
        let scale = match h.arch_get("rope.scaling.type").and_then(Value::as_str) {
            None | Some("none") => 1.0,
            Some("linear") => 1.0 / h.arch_get("rope.scaling.factor").and_then(Value::as_f64).unwrap_or(1.0),
            Some(other) => return Err(Error::load(path, format!("rope scaling {other:?} is not supported"))),
        };
        Ok(LlamaParams {
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            rms_eps: h.arch_get("attention.layer_norm_rms_epsilon").and_then(Value::as_f64).unwrap_or(1e-5),
            rope_freq_base: h.arch_get("rope.freq_base").and_then(Value::as_f64).unwrap_or(10_000.0),
            rope_freq_scale: scale,
            max_context: meta_usize(h, path, "context_length")?,
            vocab,
        })
    }

    /// Bytes of KV cache per token of context (f32 keys and values, every layer).
    pub fn kv_bytes_per_token(&self) -> u64 {
        [2, self.n_layer, self.n_head_kv, self.head_dim, std::mem::size_of::<f32>()]
            .iter()
            .fold(1u64, |acc, &x| acc.saturating_mul(x as u64))
    }
}

/// A weight matrix: our AVX2 kernels for Q4_1 and Q8_0 on the CPU (candle's Q4_1 is scalar), candle's
/// otherwise.
#[derive(Clone)]
enum Linear {
    Quant(Arc<QuantMatrix>),
    Candle(QMatMul),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Candle(m) => Ok(m.forward(x)?),
            Linear::Quant(w) => {
                let (m, k) = x.dims2()?;
                debug_assert_eq!(k, w.cols());
                let y = w.matmul(&x.flatten_all()?.to_vec1::<f32>()?, m);
                Ok(Tensor::from_vec(y, (m, w.rows()), x.device())?)
            }
        }
    }
}

struct Block {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
    device: Device,
}

/// The token embedding table, kept as stored: rows are dequantized on lookup. Shares its memory with
/// the output head when the model ties the two.
enum TokenEmbeddings {
    Quant(Arc<QuantMatrix>, GgmlDType),
    Candle(Arc<QTensor>),
    Dense(Tensor),
}

impl TokenEmbeddings {
    fn new(table: &Linear, dtype: GgmlDType) -> Result<Self> {
        Ok(match table {
            Linear::Quant(m) => TokenEmbeddings::Quant(m.clone(), dtype),
            Linear::Candle(QMatMul::QTensor(q)) => TokenEmbeddings::Candle(q.clone()),
            Linear::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                TokenEmbeddings::Dense(t.to_dtype(DType::F32)?)
            }
        })
    }

    fn lookup(&self, ids: &[u32], n_embd: usize) -> Result<Tensor> {
        let dequantize_row = |dtype: GgmlDType, row: &[u8]| -> Result<Vec<f32>> {
            Ok(qtensor_from_ggml(dtype, row, vec![n_embd], &Device::Cpu)?.dequantize(&Device::Cpu)?.to_vec1::<f32>()?)
        };
        let mut rows = Vec::with_capacity(ids.len() * n_embd);
        for &id in ids {
            let id = id as usize;
            match self {
                TokenEmbeddings::Quant(m, dtype) => rows.extend(dequantize_row(*dtype, m.row_bytes(id))?),
                TokenEmbeddings::Candle(q) => {
                    let data = q.data()?;
                    let row_bytes = data.len() / q.shape().dims()[0];
                    rows.extend(dequantize_row(q.dtype(), &data[id * row_bytes..(id + 1) * row_bytes])?);
                }
                TokenEmbeddings::Dense(t) => rows.extend(t.get(id)?.to_vec1::<f32>()?),
            }
        }
        Ok(Tensor::from_vec(rows, (ids.len(), n_embd), &Device::Cpu)?)
    }
}

/// A loaded llama model: weights, tokenizer and chat template, shared by all instances of one file.
pub struct LlmModel {
    /// Declared first, so the pages are unlocked before the weights go (fields drop in order): our own
    /// copies, and our count on the shared mapping's lock.
    locked: Option<(LockedPages, Option<storage::PageLock>)>,
    /// Model hyper-parameters.
    pub params: LlamaParams,
    /// The tokenizer built from the GGUF metadata.
    pub tokenizer: GgufTokenizer,
    template: Option<ChatTemplate>,
    embeddings: TokenEmbeddings,
    blocks: Vec<Block>,
    output_norm: Tensor,
    output: Linear,
    output_device: Device,
    /// Weight bytes held in memory.
    pub weights_bytes: u64,
    path: PathBuf,
    /// Keeps the file's shared mapping alive for as long as the model (SPEC §4); quantized matrices
    /// used in place read from it, and every pass checks it is still intact.
    mapping: Option<Arc<storage::MappedFile>>,
}

fn keep_in_memory_error(err: std::io::Error) -> Error {
    Error::InvalidConfig(format!(
        "keepModelInMemory: cannot lock the weights in RAM ({err}); raise the memlock limit (ulimit -l) or set \
         keepModelInMemory to false"
    ))
}

impl std::fmt::Debug for LlmModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmModel").field("path", &self.path).field("params", &self.params).finish()
    }
}

/// Tensors the loader reads, in file order, for progress accounting.
fn tensor<'h>(h: &'h GgufHeader, path: &Path, name: &str) -> Result<&'h TensorInfo> {
    h.tensor(name).ok_or_else(|| Error::load(path, format!("tensor {name} is missing")))
}

/// Bytes read in (and reported to progress) at a time when a tensor is used in place.
const POPULATE_CHUNK: usize = 4 << 20;

struct Loader<'a, 'p, 'q> {
    header: &'a GgufHeader,
    bytes: &'a FileBytes,
    path: &'a Path,
    chunks: ChunkedLoad<'p, 'q>,
}

impl Loader<'_, '_, '_> {
    fn qtensor(&mut self, name: &str, expect: &[usize], device: &Device) -> Result<QTensor> {
        let info = tensor(self.header, self.path, name)?;
        if info.dims != expect {
            return Err(Error::load(
                self.path,
                format!("tensor {name} has shape {:?}, expected {expect:?}", info.dims),
            ));
        }
        storage::check_unchanged(self.bytes)?;
        let data = &self.bytes.as_slice()[info.offset..info.offset + info.size];
        let q = qtensor_from_ggml(info.dtype, data, info.shape(), device)
            .map_err(|e| Error::load(self.path, e.to_string()))?;
        self.chunks.advance(info.size as u64)?;
        Ok(q)
    }

    fn matmul(&mut self, name: &str, expect: &[usize], device: &Device) -> Result<Linear> {
        let info = tensor(self.header, self.path, name)?;
        let kind = match info.dtype {
            GgmlDType::Q4_1 => Some(QuantKind::Q4_1),
            GgmlDType::Q8_0 => Some(QuantKind::Q8_0),
            _ => None,
        };
        if let Some(kind) = kind.filter(|_| device.is_cpu() && info.dims == expect) {
            storage::check_unchanged(self.bytes)?;
            let range = info.offset..info.offset + info.size;
            let w = match self.bytes {
                // In place: no copy, and the pages stay the page cache's (shared with other processes).
                // Read in now, in large reads, chunk by chunk with progress: from a cold page cache,
                // leaving them to fault in during the first token made load + first token 1.4x slower.
                FileBytes::Mapped(file) => {
                    for chunk in file.bytes()[range.clone()].chunks(POPULATE_CHUNK) {
                        storage::populate(chunk);
                        self.chunks.advance(chunk.len() as u64)?;
                    }
                    QuantMatrix::mapped(kind, file.clone(), range, expect[1], expect[0])
                }
                FileBytes::Owned(bytes) => {
                    self.chunks.advance(info.size as u64)?;
                    QuantMatrix::new(kind, &bytes[range], expect[1], expect[0])
                }
            };
            let w = w.ok_or_else(|| Error::load(self.path, format!("tensor {name}: size does not match its shape")))?;
            return Ok(Linear::Quant(Arc::new(w)));
        }
        Ok(Linear::Candle(QMatMul::from_qtensor(self.qtensor(name, expect, device)?)?))
    }

    fn vector(&mut self, name: &str, len: usize, device: &Device) -> Result<Tensor> {
        Ok(self.qtensor(name, &[len], device)?.dequantize(device)?)
    }
}

impl LlmModel {
    /// Load a GGUF file: the header is validated first, then tensors are materialised one by one,
    /// reporting progress over `[base, 1)` of the bar. Q4_1/Q8_0 matrices on the CPU are used in place
    /// from the mapping (their pages read in now); other tensors, and everything read with
    /// `tryMmap: false`, are copied.
    pub fn load(
        path: &Path,
        header: &GgufHeader,
        bytes: &FileBytes,
        placement: &Placement,
        keep_in_memory: bool,
        progress: &mut Progress<'_>,
        base: f32,
    ) -> Result<Self> {
        let params = LlamaParams::from_header(header, path)?;
        let tokenizer = GgufTokenizer::from_gguf(header, path)?;
        if tokenizer.vocab_size() != params.vocab {
            return Err(Error::load(
                path,
                format!("{} tokens in the vocabulary but {} rows in token_embd", tokenizer.vocab_size(), params.vocab),
            ));
        }
        let template = match header.get("tokenizer.chat_template").and_then(Value::as_str) {
            Some(src) => Some(
                ChatTemplate::new(src, tokenizer.bos_token(), tokenizer.eos_token())
                    .map_err(|e| Error::load(path, e.to_string()))?,
            ),
            None => None,
        };
        let (e, kv) = (params.n_embd, params.n_head_kv * params.head_dim);
        let total = header.tensor_bytes();
        let mut ld = Loader { header, bytes, path, chunks: ChunkedLoad::new(progress, total, base, 1.0 - base) };

        // Ids are checked against the vocabulary before every lookup (`check_ids`).
        let embd_info = tensor(header, path, "token_embd.weight")?.clone();
        let table = ld.matmul("token_embd.weight", &[e, params.vocab], &Device::Cpu)?;

        let mut blocks = Vec::with_capacity(params.n_layer);
        for i in 0..params.n_layer {
            let dev = placement.block_device(i)?;
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let ff = tensor(header, path, &p("ffn_gate"))?.dims.get(1).copied().unwrap_or(0);
            blocks.push(Block {
                attn_norm: ld.vector(&p("attn_norm"), e, &dev)?,
                wq: ld.matmul(&p("attn_q"), &[e, e], &dev)?,
                wk: ld.matmul(&p("attn_k"), &[e, kv], &dev)?,
                wv: ld.matmul(&p("attn_v"), &[e, kv], &dev)?,
                wo: ld.matmul(&p("attn_output"), &[e, e], &dev)?,
                ffn_norm: ld.vector(&p("ffn_norm"), e, &dev)?,
                w_gate: ld.matmul(&p("ffn_gate"), &[e, ff], &dev)?,
                w_up: ld.matmul(&p("ffn_up"), &[e, ff], &dev)?,
                w_down: ld.matmul(&p("ffn_down"), &[ff, e], &dev)?,
                device: dev,
            });
        }
        let output_device = placement.output_device()?;
        let output_norm = ld.vector("output_norm.weight", e, &output_device)?;
        // Many small models tie the output head to the token embeddings.
        let output = if header.tensor("output.weight").is_some() {
            ld.matmul("output.weight", &[e, params.vocab], &output_device)?
        } else if output_device.is_cpu() {
            table.clone()
        } else {
            let data = &bytes.as_slice()[embd_info.offset..embd_info.offset + embd_info.size];
            Linear::Candle(QMatMul::from_qtensor(qtensor_from_ggml(
                embd_info.dtype,
                data,
                embd_info.shape(),
                &output_device,
            )?)?)
        };
        storage::check_intact(bytes)?; // a truncation during the copies above read zeros
        let mapping = match bytes {
            FileBytes::Mapped(m) => Some(m.clone()),
            FileBytes::Owned(_) => None,
        };
        let mut model = LlmModel {
            weights_bytes: total,
            params,
            tokenizer,
            template,
            embeddings: TokenEmbeddings::new(&table, embd_info.dtype)?,
            blocks,
            output_norm,
            output,
            output_device,
            path: path.to_path_buf(),
            mapping,
            locked: None,
        };
        let in_place = model.reads_in_place();
        if let (Some(m), false) = (&model.mapping, in_place) {
            m.release_pages(); // everything was copied out
        }
        if keep_in_memory {
            // Weights used in place are pages of the shared mapping, which other models of the same file
            // may lock too: lock them through it (counted), and only our own copies here.
            let mapping_lock = match (&model.mapping, in_place) {
                (Some(m), true) => Some(m.lock_pages().map_err(keep_in_memory_error)?),
                _ => None,
            };
            let own = LockedPages::lock(&model.weight_regions()?).map_err(keep_in_memory_error)?;
            model.locked = Some((own, mapping_lock));
        }
        Ok(model)
    }

    /// Every weight matrix: each block's seven, then the output head.
    fn linears(&self) -> impl Iterator<Item = &Linear> {
        let blocks = self.blocks.iter().flat_map(|b| [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down]);
        blocks.chain([&self.output])
    }

    /// Whether any weights are read in place from the file's mapping (so its pages must stay).
    fn reads_in_place(&self) -> bool {
        let table = matches!(&self.embeddings, TokenEmbeddings::Quant(m, _) if m.is_mapped());
        table || self.linears().any(|l| matches!(l, Linear::Quant(m) if m.is_mapped()))
    }

    /// The big weight buffers this model owns (quantized matrices not read in place), for page locking.
    fn weight_regions(&self) -> Result<Vec<&[u8]>> {
        let mut out = Vec::new();
        for l in self.linears() {
            match l {
                Linear::Quant(m) if m.is_mapped() => {}
                Linear::Quant(m) => out.push(m.bytes()),
                Linear::Candle(QMatMul::QTensor(q)) => {
                    if let std::borrow::Cow::Borrowed(b) = q.data()? {
                        out.push(b);
                    }
                }
                Linear::Candle(_) => {}
            }
        }
        Ok(out)
    }

    /// Render a chat with the model's own template.
    pub fn apply_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        match &self.template {
            Some(t) => t.render(messages, add_generation_prompt),
            None => Err(Error::NotSupported(format!("{} has no chat template", self.path.display()))),
        }
    }

    /// Run `tokens` at positions `pos..` through the model, filling the cache; logits for every position
    /// (`all = true`) or only the last, as a `(n, vocab)` f32 tensor on the CPU.
    fn forward(&self, cache: &mut KvCache, rope: &Rope, tokens: &[u32], pos: usize, all: bool) -> Result<Tensor> {
        // On the pool: called from outside it, decoding ran at half speed (see `kernels::on_pool`).
        // Decoding is ~200 short matmuls per token, where a sleeping worker's wake-up costs most; a prompt
        // chunk's matmuls are long enough that keeping the workers awake only burns a core.
        let keep_awake = tokens.len() == 1;
        let logits = crate::kernels::on_pool(keep_awake, || self.forward_on_pool(cache, rope, tokens, pos, all))?;
        // Weights read in place from a truncated file read as zeros: fail rather than return garbage.
        self.mapping.as_ref().map_or(Ok(()), |m| m.check_intact())?;
        Ok(logits)
    }

    fn forward_on_pool(
        &self,
        cache: &mut KvCache,
        rope: &Rope,
        tokens: &[u32],
        pos: usize,
        all: bool,
    ) -> Result<Tensor> {
        let p = &self.params;
        let seq = tokens.len();
        let mut x = self.embeddings.lookup(tokens, p.n_embd)?;
        let mask = causal_mask(seq, pos)?;
        for (i, b) in self.blocks.iter().enumerate() {
            x = x.to_device(&b.device)?;
            let h = candle_nn::ops::rms_norm(&x, &b.attn_norm, p.rms_eps as f32)?;
            let q = b.wq.forward(&h)?.reshape((1, seq, p.n_head, p.head_dim))?.transpose(1, 2)?.contiguous()?;
            let k = b.wk.forward(&h)?.reshape((1, seq, p.n_head_kv, p.head_dim))?.transpose(1, 2)?.contiguous()?;
            let v = b.wv.forward(&h)?.reshape((seq, p.n_head_kv, p.head_dim))?.transpose(0, 1)?.contiguous()?;
            let (cos, sin) = rope.at(pos, seq, &b.device)?;
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?.squeeze(0)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?.squeeze(0)?;
            // llama.cpp keeps K and V in f16 and multiplies in f16: round the same way to agree with it.
            let (q, k, v) = (round_f16(&q)?, round_f16(&k)?, round_f16(&v)?);
            let (k_all, v_all) = cache.append(i, &k, &v, pos)?;
            let attn = attention(&q, &k_all, &v_all, mask.as_ref(), p)?;
            let attn = attn.transpose(0, 1)?.reshape((seq, p.n_embd))?;
            x = (x + b.wo.forward(&attn)?)?;
            let h = candle_nn::ops::rms_norm(&x, &b.ffn_norm, p.rms_eps as f32)?;
            let gate = b.w_gate.forward(&h)?.silu()?;
            let ff = b.w_down.forward(&(gate * b.w_up.forward(&h)?)?)?;
            x = (x + ff)?;
        }
        let x = x.to_device(&self.output_device)?;
        let x = if all { x } else { x.narrow(0, seq - 1, 1)? };
        let x = candle_nn::ops::rms_norm(&x, &self.output_norm, p.rms_eps as f32)?;
        Ok(self.output.forward(&x)?.to_device(&Device::Cpu)?)
    }

    /// Evaluate `tokens` from an empty cache in `batch`-sized chunks; logits at every position.
    pub fn evaluate(&self, session: &mut LlmSession, tokens: &[u32]) -> Result<Vec<f32>> {
        session.check_fits(tokens.len())?;
        self.check_ids(tokens)?;
        session.cached.clear();
        let mut out = Vec::with_capacity(tokens.len() * self.params.vocab);
        for (c, chunk) in tokens.chunks(session.eval_batch_size).enumerate() {
            let logits = self.forward(&mut session.cache, &session.rope, chunk, c * session.eval_batch_size, true)?;
            out.extend(logits.flatten_all()?.to_vec1::<f32>()?);
            session.cached.extend_from_slice(chunk);
        }
        Ok(out)
    }

    fn check_ids(&self, tokens: &[u32]) -> Result<()> {
        match tokens.iter().find(|&&t| t as usize >= self.params.vocab) {
            Some(t) => Err(Error::InvalidConfig(format!(
                "token id {t} is outside the vocabulary (size {})",
                self.params.vocab
            ))),
            None => Ok(()),
        }
    }

    /// Feed the prompt, reusing the cached prefix, and return the next-token logits.
    fn prefill(&self, session: &mut LlmSession, prompt: &[u32]) -> Result<Vec<f32>> {
        session.check_fits(prompt.len())?;
        self.check_ids(prompt)?;
        // Reuse the longest cached prefix, but always evaluate at least one token to get logits.
        let common = session.cached.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
        session.cached.truncate(common);
        let mut logits = None;
        for chunk in prompt[common..].chunks(session.eval_batch_size) {
            let pos = session.cached.len();
            logits = Some(self.forward(&mut session.cache, &session.rope, chunk, pos, false)?);
            session.cached.extend_from_slice(chunk);
        }
        let logits = logits.ok_or_else(|| Error::InvalidConfig("the prompt is empty".into()))?;
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    }

    fn decode_one(&self, session: &mut LlmSession, token: u32) -> Result<Vec<f32>> {
        let pos = session.cached.len();
        let logits = self.forward(&mut session.cache, &session.rope, &[token], pos, false)?;
        session.cached.push(token);
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Start a prediction; nothing runs until the first `next_fragment`.
    pub fn start(&self, prompt: Vec<u32>, config: PredictionConfig) -> Result<GenerationState> {
        if prompt.is_empty() {
            return Err(Error::InvalidConfig("the prompt is empty: give at least one token".into()));
        }
        let rng = StdRng::seed_from_u64(config.seed.unwrap_or_else(rand::random));
        Ok(GenerationState {
            prompt,
            config,
            rng,
            started: Instant::now(),
            first_token_at: None,
            finished_at: None,
            logits: None,
            generated: Vec::new(),
            pending_bytes: Vec::new(),
            text: String::new(),
            emitted: 0,
            fragment_tokens: Vec::new(),
            stop_reason: None,
        })
    }

    /// Produce the next fragment of text, or `None` when the prediction has ended.
    pub fn next_fragment(&self, session: &mut LlmSession, st: &mut GenerationState) -> Result<Option<Fragment>> {
        loop {
            if st.stop_reason.is_some() {
                return Ok(st.flush());
            }
            let logits = match st.logits.take() {
                Some(l) => l,
                None => self.prefill(session, &st.prompt)?,
            };
            if st.config.max_tokens.is_some_and(|m| st.generated.len() >= m) {
                st.finish(StopReason::MaxPredictedTokensReached);
                continue;
            }
            // The look-back window is only built when a repeat penalty will use it.
            let recent = if st.config.repeat_penalty != 1.0 { st.recent() } else { Vec::new() };
            let token = sample(logits, &st.config, &recent, &mut st.rng);
            st.first_token_at.get_or_insert_with(Instant::now);
            if self.tokenizer.eog_ids().contains(&token) {
                st.finish(StopReason::EosFound);
                continue;
            }
            st.generated.push(token);
            st.fragment_tokens.push(token);
            st.pending_bytes.extend_from_slice(self.tokenizer.token_bytes(token));
            st.take_complete_utf8();
            let stopped = st.check_stop_strings();
            if !stopped {
                if st.config.max_tokens.is_some_and(|m| st.generated.len() >= m) {
                    st.finish(StopReason::MaxPredictedTokensReached);
                } else if session.cached.len() + 1 >= session.context_length {
                    st.finish(StopReason::ContextLengthReached);
                } else {
                    st.logits = Some(self.decode_one(session, token)?);
                }
            }
            if let Some(fragment) = st.emit_ready() {
                return Ok(Some(fragment));
            }
        }
    }
}

/// Why a prediction ended (LM Studio's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token.
    EosFound,
    /// `maxTokens` reached.
    MaxPredictedTokensReached,
    /// A stop string appeared.
    StopStringFound,
    /// The context is full.
    ContextLengthReached,
    /// Cancelled by the caller.
    UserStopped,
}

impl StopReason {
    /// LM Studio's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EosFound => "eosFound",
            StopReason::MaxPredictedTokensReached => "maxPredictedTokensReached",
            StopReason::StopStringFound => "stopStringFound",
            StopReason::ContextLengthReached => "contextLengthReached",
            StopReason::UserStopped => "userStopped",
        }
    }
}

/// Sampling and stopping parameters (LM Studio's `LlmPredictionConfig`).
#[derive(Debug, Clone)]
pub struct PredictionConfig {
    /// Most tokens to predict (`None`: until EOS or the context is full).
    pub max_tokens: Option<usize>,
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0.0 = off.
    pub min_p: f32,
    /// 1.0 = off.
    pub repeat_penalty: f32,
    /// Stop when any of these appears in the output; not emitted.
    pub stop_strings: Vec<String>,
    /// RNG seed; `None` = random.
    pub seed: Option<u64>,
}

/// Tokens the repeat penalty looks back over (llama.cpp's `repeat_last_n`).
const REPEAT_LAST_N: usize = 64;

impl Default for PredictionConfig {
    /// llama.cpp's defaults (repeat penalty off).
    fn default() -> Self {
        PredictionConfig {
            max_tokens: None,
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            stop_strings: Vec::new(),
            seed: None,
        }
    }
}

fn sample(mut logits: Vec<f32>, cfg: &PredictionConfig, recent: &[u32], rng: &mut StdRng) -> u32 {
    if cfg.repeat_penalty != 1.0 {
        for &t in recent {
            let l = &mut logits[t as usize];
            *l = if *l > 0.0 { *l / cfg.repeat_penalty } else { *l * cfg.repeat_penalty };
        }
    }
    let argmax = || logits.iter().enumerate().fold(0, |best, (i, &l)| if l > logits[best] { i } else { best }) as u32;
    if cfg.temperature <= 0.0 {
        return argmax();
    }
    // llama.cpp's chain: top-k → top-p → min-p → temperature → draw.
    let mut cands: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    cands.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    if cfg.top_k > 0 {
        cands.truncate(cfg.top_k);
    }
    let softmax = |c: &[(u32, f32)], t: f32| -> Vec<f32> {
        let max = c[0].1;
        let e: Vec<f32> = c.iter().map(|&(_, l)| ((l - max) / t).exp()).collect();
        let s: f32 = e.iter().sum();
        e.into_iter().map(|x| x / s).collect()
    };
    if cfg.top_p < 1.0 {
        let probs = softmax(&cands, 1.0);
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= cfg.top_p
        });
        cands.truncate(keep.map_or(cands.len(), |k| k + 1));
    }
    if cfg.min_p > 0.0 {
        let probs = softmax(&cands, 1.0);
        let floor = probs[0] * cfg.min_p;
        let keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
        cands.truncate(keep);
    }
    let probs = softmax(&cands, cfg.temperature);
    match WeightedIndex::new(&probs) {
        Ok(dist) => cands[dist.sample(rng)].0,
        Err(_) => cands[0].0,
    }
}

/// A piece of streamed output.
#[derive(Debug, Clone, Default)]
pub struct Fragment {
    /// Text (complete UTF-8; stop strings withheld).
    pub content: String,
    /// The token ids that produced it.
    pub tokens: Vec<u32>,
}

/// The state of one prediction between fragments.
pub struct GenerationState {
    prompt: Vec<u32>,
    config: PredictionConfig,
    rng: StdRng,
    started: Instant,
    first_token_at: Option<Instant>,
    finished_at: Option<Instant>,
    logits: Option<Vec<f32>>,
    generated: Vec<u32>,
    pending_bytes: Vec<u8>,
    text: String,
    emitted: usize,
    fragment_tokens: Vec<u32>,
    stop_reason: Option<StopReason>,
}

/// Counters of a finished prediction (LM Studio's names).
#[derive(Debug, Clone)]
pub struct PredictionStats {
    /// Tokens in the prompt.
    pub prompt_tokens_count: usize,
    /// Tokens predicted (end-of-generation token excluded).
    pub predicted_tokens_count: usize,
    /// Seconds from the request to the first sampled token.
    pub time_to_first_token_sec: f64,
    /// Decode speed after the first token.
    pub tokens_per_second: f64,
    /// Why it ended.
    pub stop_reason: StopReason,
}

impl GenerationState {
    fn recent(&self) -> Vec<u32> {
        let skip = (self.prompt.len() + self.generated.len()).saturating_sub(REPEAT_LAST_N);
        self.prompt.iter().chain(&self.generated).skip(skip).copied().collect()
    }

    fn finish(&mut self, reason: StopReason) {
        if self.stop_reason.is_none() {
            self.stop_reason = Some(reason);
            self.finished_at = Some(Instant::now());
        }
    }

    /// Stop at the next step with "userStopped".
    pub fn cancel(&mut self) {
        self.finish(StopReason::UserStopped);
    }

    /// Whether the prediction has ended.
    pub fn is_done(&self) -> bool {
        self.stop_reason.is_some()
    }

    /// Move the longest valid UTF-8 prefix of the pending bytes into the text.
    fn take_complete_utf8(&mut self) {
        let valid = match std::str::from_utf8(&self.pending_bytes) {
            Ok(s) => s.len(),
            // An incomplete sequence at the end waits for the next token; invalid bytes become U+FFFD.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending_bytes.len(),
        };
        let head: Vec<u8> = self.pending_bytes.drain(..valid).collect();
        self.text.push_str(&String::from_utf8_lossy(&head));
    }

    /// Truncate at the first stop string and end the prediction; true if one was found.
    fn check_stop_strings(&mut self) -> bool {
        let from = self.emitted;
        let hit = self
            .config
            .stop_strings
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            self.finish(StopReason::StopStringFound);
            return true;
        }
        false
    }

    /// Text that can no longer become part of a stop string, as a fragment.
    fn emit_ready(&mut self) -> Option<Fragment> {
        let mut end = self.text.len();
        if self.stop_reason.is_none() {
            for s in self.config.stop_strings.iter().filter(|s| !s.is_empty()) {
                // Hold back the longest text suffix that is a prefix of a stop string.
                for (i, _) in self.text.char_indices().filter(|&(i, _)| i >= self.emitted) {
                    if s.starts_with(&self.text[i..]) {
                        end = end.min(i);
                        break;
                    }
                }
            }
        }
        if end <= self.emitted {
            // Nothing printable yet: the tokens ride along with the next fragment.
            return None;
        }
        let content = self.text[self.emitted..end].to_string();
        self.emitted = end;
        Some(Fragment { content, tokens: std::mem::take(&mut self.fragment_tokens) })
    }

    fn flush(&mut self) -> Option<Fragment> {
        if !self.pending_bytes.is_empty() && self.stop_reason != Some(StopReason::StopStringFound) {
            let rest = std::mem::take(&mut self.pending_bytes);
            self.text.push_str(&String::from_utf8_lossy(&rest));
        }
        if self.emitted < self.text.len() || !self.fragment_tokens.is_empty() {
            let content = self.text[self.emitted..].to_string();
            self.emitted = self.text.len();
            return Some(Fragment { content, tokens: std::mem::take(&mut self.fragment_tokens) });
        }
        None
    }

    /// All text so far (after the prediction ends: the full content).
    pub fn content(&self) -> &str {
        &self.text
    }

    /// Predicted token ids.
    pub fn tokens(&self) -> &[u32] {
        &self.generated
    }

    /// Statistics; meaningful once the prediction has ended.
    pub fn stats(&self) -> PredictionStats {
        let end = self.finished_at.unwrap_or_else(Instant::now);
        let first = self.first_token_at.unwrap_or(end);
        let n = self.generated.len();
        let decode = end.duration_since(first).as_secs_f64();
        let tokens_per_second = if n > 1 && decode > 0.0 { (n - 1) as f64 / decode } else { 0.0 };
        PredictionStats {
            prompt_tokens_count: self.prompt.len(),
            predicted_tokens_count: n,
            time_to_first_token_sec: first.duration_since(self.started).as_secs_f64(),
            tokens_per_second,
            stop_reason: self.stop_reason.unwrap_or(StopReason::UserStopped),
        }
    }
}

/// Per-instance inference state: the KV cache and which tokens it holds.
pub struct LlmSession {
    cache: KvCache,
    rope: Rope,
    cached: Vec<u32>,
    /// Tokens of context.
    pub context_length: usize,
    /// Prompt chunk size.
    pub eval_batch_size: usize,
}

impl LlmSession {
    /// Allocate the whole KV cache up front (and touch it, so RSS reflects it at once).
    pub fn new(
        model: &LlmModel,
        context_length: usize,
        eval_batch_size: usize,
        rope_base: f64,
        rope_scale: f64,
    ) -> Result<Self> {
        let p = &model.params;
        let devices: Vec<Device> = model.blocks.iter().map(|b| b.device.clone()).collect();
        Ok(LlmSession {
            cache: KvCache::new(&devices, p.n_head_kv, context_length, p.head_dim)?,
            rope: Rope::new(p.head_dim, context_length, rope_base, rope_scale)?,
            cached: Vec::new(),
            context_length,
            eval_batch_size: eval_batch_size.max(1),
        })
    }

    fn check_fits(&self, n: usize) -> Result<()> {
        if n > self.context_length {
            return Err(Error::ContextLengthExceeded { tokens: n, context_length: self.context_length });
        }
        Ok(())
    }
}

/// Pre-allocated keys and values per layer, `(n_kv_heads, context, head_dim)`; written in place.
struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    fn new(devices: &[Device], n_kv: usize, ctx: usize, hd: usize) -> Result<Self> {
        let layers = devices
            .iter()
            .map(|d| {
                let shape = (n_kv, ctx, hd);
                if d.is_cpu() {
                    let k = Tensor::from_vec(resident_zeros(n_kv * ctx * hd), shape, d)?;
                    let v = Tensor::from_vec(resident_zeros(n_kv * ctx * hd), shape, d)?;
                    Ok((k, v))
                } else {
                    Ok((Tensor::zeros(shape, DType::F32, d)?, Tensor::zeros(shape, DType::F32, d)?))
                }
            })
            .collect::<Result<_>>()?;
        Ok(KvCache { layers })
    }

    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor, pos: usize) -> Result<(Tensor, Tensor)> {
        let (kc, vc) = &self.layers[layer];
        kc.slice_set(k, 1, pos)?;
        vc.slice_set(v, 1, pos)?;
        let total = pos + k.dim(1)?;
        Ok((kc.narrow(1, 0, total)?, vc.narrow(1, 0, total)?))
    }
}

/// RoPE cos/sin tables for every position of the context.
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(head_dim: usize, ctx: usize, base: f64, scale: f64) -> Result<Self> {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half).map(|i| (1.0 / base.powf(2.0 * i as f64 / head_dim as f64)) as f32).collect();
        let mut angles = Vec::with_capacity(ctx * half);
        for p in 0..ctx {
            let p = p as f32 * scale as f32;
            angles.extend(inv.iter().map(|f| p * f));
        }
        let angles = Tensor::from_vec(angles, (ctx, half), &Device::Cpu)?;
        Ok(Rope { cos: angles.cos()?, sin: angles.sin()? })
    }

    fn at(&self, pos: usize, seq: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.narrow(0, pos, seq)?.to_device(device)?, self.sin.narrow(0, pos, seq)?.to_device(device)?))
    }
}

/// Round to f16 precision, keeping f32 storage.
fn round_f16(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F16)?.to_dtype(DType::F32)?)
}

/// `-inf` above the diagonal for a chunk of `seq` queries starting at `pos`; none for one query.
fn causal_mask(seq: usize, pos: usize) -> Result<Option<Tensor>> {
    if seq == 1 {
        return Ok(None);
    }
    let total = pos + seq;
    let mask: Vec<f32> =
        (0..seq).flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Ok(Some(Tensor::from_vec(mask, (seq, total), &Device::Cpu)?))
}

/// Grouped-query attention: queries `(n_head, seq, hd)` against keys/values `(n_kv, total, hd)`.
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, p: &LlamaParams) -> Result<Tensor> {
    let seq = q.dim(1)?;
    let total = k.dim(1)?;
    let group = p.n_head / p.n_head_kv;
    // Fold the query heads that share a kv head into the rows of one matmul.
    let q = q.reshape((p.n_head_kv, group * seq, p.head_dim))?;
    let scale = 1.0 / (p.head_dim as f64).sqrt();
    let mut scores = (q.matmul(&k.t()?)? * scale)?;
    if let Some(mask) = mask {
        let mask = mask.to_device(q.device())?;
        scores = scores.reshape((p.n_head_kv, group, seq, total))?.broadcast_add(&mask)?.reshape((
            p.n_head_kv,
            group * seq,
            total,
        ))?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let probs = round_f16(&probs)?;
    Ok(probs.matmul(v)?.reshape((p.n_head, seq, p.head_dim))?)
}

/// Parameter count and quantisation summary, from a header (for the catalog).
pub fn describe(h: &GgufHeader) -> (u64, String) {
    let params: u64 = h.tensors.iter().map(|t| t.dims.iter().map(|&d| d as u64).product::<u64>()).sum();
    // The most common type among 2-D weights names the quantisation, as llama.cpp's file_type does.
    let mut counts = std::collections::HashMap::new();
    for t in h.tensors.iter().filter(|t| t.dims.len() == 2) {
        *counts.entry(gguf::dtype_name(t.dtype)).or_insert(0u64) += t.size as u64;
    }
    let quant = counts.into_iter().max_by_key(|&(_, n)| n).map_or("unknown", |(q, _)| q).to_string();
    (params, quant)
}
