//! A loaded language model: tokenizer, chat template and one architecture's decoder (`Decoder`), shared by
//! every instance of one file, and the request-level work on it: evaluating, prefilling in chunks with the
//! cached prefix reused, and the token loop of a prediction (sampling, end of generation, stop strings).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use candle_core::quantized::QMatMul;
use candle_core::Tensor;

use super::blocks::kv_cache::KvCache;
use super::blocks::linear::Linear;
use super::blocks::rope::RopeTables;
use super::generation::{Fragment, GenerationState, StopReason};
use super::gguf_loader::GgufLoader;
use super::params::LlmParams;
use super::sampling::{sample, PredictionConfig};
use super::session::LlmSession;
use super::{Architecture, Decoder};
use crate::error::{Error, Result};
use crate::formats::gguf::{GgufHeader, Value};
use crate::host::placement::Placement;
use crate::kernels::{Pass, PromptRows};
use crate::storage::{self, FileBytes, LockedPages, MappedFile, PageLock, Progress, ProgressFn};
use crate::text::{ChatMessage, ChatTemplate, GgufTokenizer};

/// A loaded language model: weights, tokenizer and chat template, shared by all instances of one file.
pub struct LlmModel {
    /// Declared first, so the pages are unlocked before the weights go (fields drop in order): our own
    /// copies, and our count on the shared mapping's lock.
    locked: Option<(LockedPages, Option<PageLock>)>,
    /// Model hyper-parameters.
    pub params: LlmParams,
    /// The tokenizer built from the GGUF metadata.
    pub tokenizer: GgufTokenizer,
    template: Option<ChatTemplate>,
    decoder: Box<dyn Decoder>,
    /// Weight bytes held in memory.
    pub weights_bytes: u64,
    path: PathBuf,
    /// Keeps the file's shared mapping alive for as long as the model (SPEC §4); quantized matrices
    /// used in place read from it, and every pass checks it is still intact.
    mapping: Option<Arc<MappedFile>>,
    /// RoPE tables by (context, base, scale), shared by the instances that use them: building them costs
    /// a sine and a cosine per position and frequency, which is most of a second instance's load otherwise.
    ropes: Mutex<Vec<(RopeKey, Weak<RopeTables>)>>,
}

/// Context length and the bits of the RoPE base and scale.
type RopeKey = (usize, u64, u64);

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

impl LlmModel {
    /// Load a GGUF file: the header is validated first, then tensors are materialised one by one,
    /// reporting progress over `[base, 1)` of the bar. Matrices on the CPU are used in place from the
    /// mapping (their pages read in now); matrices on a GPU, and everything read with `tryMmap: false`,
    /// are copied.
    pub fn load(
        path: &Path,
        header: &GgufHeader,
        bytes: &FileBytes,
        placement: &Placement,
        keep_in_memory: bool,
        progress: &mut Progress<'_>,
        base: f32,
    ) -> Result<Self> {
        let architecture = Architecture::of(header, path)?;
        let params = architecture.params(header, path)?;
        let tokenizer = GgufTokenizer::from_gguf(header, path)?;
        if tokenizer.vocab_size() != params.vocab {
            return Err(Error::load(
                path,
                format!("{} tokens in the vocabulary but {} rows in token_embd", tokenizer.vocab_size(), params.vocab),
            ));
        }
        let source = header.get("tokenizer.chat_template").and_then(Value::as_str);
        let template = match source.or_else(|| architecture.fallback_chat_template()) {
            Some(src) => Some(
                ChatTemplate::new(src, tokenizer.bos_token(), tokenizer.eos_token())
                    .map_err(|e| Error::load(path, e.to_string()))?,
            ),
            None => None,
        };
        let mut loader = GgufLoader::new(header, bytes, path, progress, base);
        let decoder = architecture.load(&mut loader, &params, placement)?;
        storage::check_intact(bytes)?; // a truncation during the copies above read zeros
        let mapping = match bytes {
            FileBytes::Mapped(m) => Some(m.clone()),
            FileBytes::Owned(_) => None,
        };
        let mut model = LlmModel {
            weights_bytes: header.tensor_bytes(),
            params,
            tokenizer,
            template,
            decoder,
            path: path.to_path_buf(),
            mapping,
            locked: None,
            ropes: Mutex::new(Vec::new()),
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

    /// Whether any weights are read in place from the file's mapping (so its pages must stay).
    fn reads_in_place(&self) -> bool {
        let table = self.decoder.token_embeddings().matrix().is_mapped();
        table || self.decoder.linears().iter().any(|l| matches!(l, Linear::Cpu(m) if m.is_mapped()))
    }

    /// The big weight buffers this model owns (matrices not read in place), for page locking.
    fn weight_regions(&self) -> Result<Vec<&[u8]>> {
        let mut out = Vec::new();
        let table = self.decoder.token_embeddings().matrix();
        if !table.is_mapped() {
            out.push(table.bytes());
        }
        for l in self.decoder.linears() {
            match l {
                Linear::Cpu(m) if m.is_mapped() => {}
                Linear::Cpu(m) => out.push(m.bytes()),
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

    /// The device of each block, for the KV cache.
    pub(super) fn block_devices(&self) -> Vec<candle_core::Device> {
        self.decoder.block_devices()
    }

    /// RoPE tables for an instance of `ctx` positions with base `base` and scale `scale`: those of another
    /// instance with the same three where one is alive, else new ones.
    pub(super) fn rope_tables(&self, ctx: usize, base: f64, scale: f64) -> Result<Arc<RopeTables>> {
        let key = (ctx, base.to_bits(), scale.to_bits());
        let mut cache = self.ropes.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|(_, tables)| tables.strong_count() > 0);
        if let Some(tables) = cache.iter().find(|(k, _)| *k == key).and_then(|(_, t)| t.upgrade()) {
            return Ok(tables);
        }
        let tables = Arc::new(self.decoder.rope_tables(ctx, base, scale)?);
        cache.push((key, Arc::downgrade(&tables)));
        Ok(tables)
    }

    /// Render a chat with the model's own template.
    pub fn apply_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        match &self.template {
            Some(t) => t.render(messages, add_generation_prompt),
            None => Err(Error::NotSupported(format!("{} has no chat template", self.path.display()))),
        }
    }

    /// The prompt of a chat for the assistant's reply, as llama.cpp's chat builds it (`common_chat_templates_apply`):
    /// the template rendered with the generation prompt, then tokenized with special tokens parsed and BOS/EOS
    /// added as the tokenizer adds them, a BOS that the template writes first (an EOS it writes last) dropped
    /// when the tokenizer adds one itself, so that it is not doubled.
    pub fn chat_prompt_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let rendered = self.apply_template(messages, true)?;
        let mut text = rendered.as_str();
        let (bos, eos) = (self.tokenizer.bos_token(), self.tokenizer.eos_token());
        if self.tokenizer.adds_bos() && !bos.is_empty() {
            text = text.strip_prefix(bos).unwrap_or(text);
        }
        if self.tokenizer.adds_eos() && !eos.is_empty() {
            text = text.strip_suffix(eos).unwrap_or(text);
        }
        self.tokenizer.encode(text, true)
    }

    /// Run `tokens` at positions `pos..` through the model, filling the cache; logits for every position
    /// (`all = true`) or only the last, as a `(n, vocab)` f32 tensor on the CPU.
    fn forward(
        &self,
        cache: &mut KvCache,
        ropes: &RopeTables,
        tokens: &[u32],
        pos: usize,
        all: bool,
        pass: Pass,
    ) -> Result<Tensor> {
        // A prompt's logits must not depend on how it was split into passes: the pass, not the row count,
        // picks the kernels (see `kernels::run_pass`).
        let logits = crate::kernels::run_pass(pass, || self.decoder.forward(cache, ropes, tokens, pos, all))?;
        // Weights read in place from a truncated file read as zeros: fail rather than return garbage.
        self.mapping.as_ref().map_or(Ok(()), |m| m.check_intact())?;
        Ok(logits)
    }

    /// Evaluate `tokens` from an empty cache in `batch`-sized chunks; logits at every position.
    pub fn evaluate(&self, session: &mut LlmSession, tokens: &[u32]) -> Result<Vec<f32>> {
        session.check_fits(tokens.len())?;
        self.check_ids(tokens)?;
        session.cached.clear();
        let mut out = Vec::with_capacity(tokens.len() * self.params.vocab);
        for (c, chunk) in tokens.chunks(session.eval_batch_size).enumerate() {
            let first = c * session.eval_batch_size;
            let rows = PromptRows { first, total: tokens.len(), chunk: chunk.len() };
            let logits = self.forward(&mut session.cache, &session.ropes, chunk, first, true, Pass::Prompt(rows))?;
            out.extend(logits.flatten_all()?.to_vec1::<f32>()?);
            session.cached.extend_from_slice(chunk);
        }
        Ok(out)
    }

    /// An id past the vocabulary would read past the embedding table: refuse it.
    fn check_ids(&self, tokens: &[u32]) -> Result<()> {
        match tokens.iter().find(|&&t| t as usize >= self.params.vocab) {
            Some(t) => {
                Err(Error::InvalidInput(format!("token id {t} is outside the vocabulary (size {})", self.params.vocab)))
            }
            None => Ok(()),
        }
    }

    /// Feed the prompt, reusing the cached prefix, and return the next-token logits. `on_progress` gets 0.0, then
    /// after each `eval_batch_size` chunk the share of the tokens to evaluate that are done (exactly 1.0 last), as
    /// LM Studio's `onPromptProcessingProgress`; an error from it stops here as `Cancelled`.
    fn prefill(
        &self,
        session: &mut LlmSession,
        prompt: &[u32],
        mut on_progress: Option<&mut ProgressFn<'_>>,
    ) -> Result<Vec<f32>> {
        session.check_fits(prompt.len())?;
        self.check_ids(prompt)?;
        let mut report = |fraction: f32| match on_progress.as_mut() {
            Some(callback) => callback(fraction).map_err(Error::Cancelled),
            None => Ok(()),
        };
        // Reuse the longest cached prefix, but always evaluate at least one token to get logits.
        let common = session.cached.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
        session.cached.truncate(common);
        let todo = &prompt[common..];
        report(0.0)?;
        let mut logits = None;
        for chunk in todo.chunks(session.eval_batch_size) {
            let pos = session.cached.len();
            let rows = PromptRows { first: pos - common, total: todo.len(), chunk: chunk.len() };
            logits = Some(self.forward(&mut session.cache, &session.ropes, chunk, pos, false, Pass::Prompt(rows))?);
            session.cached.extend_from_slice(chunk);
            report((session.cached.len() - common) as f32 / todo.len() as f32)?;
        }
        let logits = logits.ok_or_else(|| Error::InvalidInput("the prompt is empty".into()))?;
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    }

    fn decode_one(&self, session: &mut LlmSession, token: u32) -> Result<Vec<f32>> {
        let pos = session.cached.len();
        let logits = self.forward(&mut session.cache, &session.ropes, &[token], pos, false, Pass::Decode)?;
        session.cached.push(token);
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Start a prediction; nothing runs until the first `next_fragment`.
    pub fn start(&self, prompt: Vec<u32>, config: PredictionConfig) -> Result<GenerationState> {
        if prompt.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty: give at least one token".into()));
        }
        Ok(GenerationState::new(prompt, config))
    }

    /// Produce the next fragment of text, or `None` when the prediction has ended. The first call processes the
    /// prompt, reporting to `on_prompt_progress` (see `prefill`).
    pub fn next_fragment(
        &self,
        session: &mut LlmSession,
        st: &mut GenerationState,
        mut on_prompt_progress: Option<&mut ProgressFn<'_>>,
    ) -> Result<Option<Fragment>> {
        loop {
            if st.is_done() {
                return Ok(st.flush());
            }
            let logits = match st.logits.take() {
                Some(l) => l,
                None => self.prefill(session, &st.prompt, on_prompt_progress.take())?,
            };
            if st.config.max_tokens.is_some_and(|m| st.tokens().len() >= m) {
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
            let stopped = st.push_token(token, self.tokenizer.token_bytes(token));
            if !stopped {
                if st.config.max_tokens.is_some_and(|m| st.tokens().len() >= m) {
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
