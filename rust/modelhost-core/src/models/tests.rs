//! The decoder architectures on tiny seeded random models written here: each one loads and runs; the shared blocks'
//! variants agree where they must (chunked prefill = whole prompt, a fused projection = the separate ones, RoPE
//! factors of 1 = none); a sliding window hides exactly the keys it should; and every tensor or key that would
//! change the computation without being run fails the load. The numbers themselves are checked against llama.cpp's
//! on real tokenizers and every weight type by the Python family tests.

use std::path::Path;
use std::sync::Arc;

use super::blocks::rope::{RopeConfig, RopeStyle};
use super::transformer::RopeSetup;
use super::{Architecture, LlmModel, LlmSession};
use crate::error::{Error, Result};
use crate::formats::gguf::{parse, Value};
use crate::formats::gguf_writer::{write, TensorSpec};
use crate::host::placement::Placement;
use crate::storage::{FileBytes, Progress};
use crate::text::ChatMessage;

const EMBD: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FF: usize = 96;
const LAYERS: usize = 3;
const CONTEXT: usize = 64;
const TOKENS: [u32; 12] = [1, 200, 201, 5, 202, 90, 203, 17, 204, 250, 205, 40];

/// A tiny model file: metadata and tensors, edited by the tests before writing.
struct Tiny {
    arch: &'static str,
    kvs: Vec<(String, Value)>,
    tensors: Vec<TensorSpec>,
}

fn vocab() -> Vec<String> {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    tokens.extend(["<start_of_turn>", "<end_of_turn>", "▁", "h", "i", "▁hi"].map(String::from));
    tokens
}

/// Seeded values in [-scale, scale).
fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn f32_tensor(name: &str, dims: &[usize], data: &[f32]) -> TensorSpec {
    assert_eq!(dims.iter().product::<usize>(), data.len(), "{name}");
    TensorSpec {
        name: name.to_owned(),
        dims: dims.iter().map(|&d| d as u64).collect(),
        type_id: 0,
        data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

impl Tiny {
    /// A model of `arch` with the tensors llama.cpp's graph for it reads, and `head_dim` per head.
    fn new(arch: &'static str, head_dim: usize) -> Self {
        let tokens = vocab();
        let n_vocab = tokens.len();
        let (q, kv) = (HEADS * head_dim, KV_HEADS * head_dim);
        let key = |k: &str| format!("{arch}.{k}");
        let mut types = vec![Value::I32(2), Value::I32(3), Value::I32(3)];
        types.extend((0..256).map(|_| Value::I32(6)));
        types.extend([3, 3, 1, 1, 1, 1].map(Value::I32));
        let kvs = vec![
            ("general.architecture".to_owned(), Value::String(arch.to_owned())),
            (key("block_count"), Value::U32(LAYERS as u32)),
            (key("context_length"), Value::U32(CONTEXT as u32)),
            (key("embedding_length"), Value::U32(EMBD as u32)),
            (key("feed_forward_length"), Value::U32(FF as u32)),
            (key("attention.head_count"), Value::U32(HEADS as u32)),
            (key("attention.head_count_kv"), Value::U32(KV_HEADS as u32)),
            (key("attention.key_length"), Value::U32(head_dim as u32)),
            (key("attention.value_length"), Value::U32(head_dim as u32)),
            (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
            (key("rope.freq_base"), Value::F32(10_000.0)),
            ("tokenizer.ggml.model".to_owned(), Value::String("llama".to_owned())),
            ("tokenizer.ggml.tokens".to_owned(), Value::Array(tokens.into_iter().map(Value::String).collect())),
            ("tokenizer.ggml.token_type".to_owned(), Value::Array(types)),
            ("tokenizer.ggml.bos_token_id".to_owned(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".to_owned(), Value::U32(2)),
        ];
        let mut seed = 0;
        let mut random = |dims: &[usize], scale: f32| {
            seed += 1;
            values(seed, dims.iter().product(), scale)
        };
        let mut t = vec![f32_tensor("token_embd.weight", &[EMBD, n_vocab], &random(&[EMBD, n_vocab], 1.0))];
        let norm = |random: &mut dyn FnMut(&[usize], f32) -> Vec<f32>, len: usize| {
            random(&[len], 0.2).into_iter().map(|v| 1.0 + v).collect::<Vec<f32>>()
        };
        for i in 0..LAYERS {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            t.push(f32_tensor(&n("attn_norm"), &[EMBD], &norm(&mut random, EMBD)));
            if arch == "phi3" {
                t.push(f32_tensor(&n("attn_qkv"), &[EMBD, q + 2 * kv], &random(&[EMBD, q + 2 * kv], 0.3)));
            } else {
                t.push(f32_tensor(&n("attn_q"), &[EMBD, q], &random(&[EMBD, q], 0.3)));
                t.push(f32_tensor(&n("attn_k"), &[EMBD, kv], &random(&[EMBD, kv], 0.3)));
                t.push(f32_tensor(&n("attn_v"), &[EMBD, kv], &random(&[EMBD, kv], 0.3)));
            }
            if arch == "qwen2" {
                for (part, width) in [("attn_q", q), ("attn_k", kv), ("attn_v", kv)] {
                    t.push(f32_tensor(&format!("blk.{i}.{part}.bias"), &[width], &random(&[width], 0.5)));
                }
            }
            if arch == "qwen3" || arch == "gemma3" {
                t.push(f32_tensor(&n("attn_q_norm"), &[head_dim], &norm(&mut random, head_dim)));
                t.push(f32_tensor(&n("attn_k_norm"), &[head_dim], &norm(&mut random, head_dim)));
            }
            t.push(f32_tensor(&n("attn_output"), &[q, EMBD], &random(&[q, EMBD], 0.3)));
            t.push(f32_tensor(&n("ffn_norm"), &[EMBD], &norm(&mut random, EMBD)));
            if arch == "phi3" {
                t.push(f32_tensor(&n("ffn_up"), &[EMBD, 2 * FF], &random(&[EMBD, 2 * FF], 0.3)));
            } else {
                t.push(f32_tensor(&n("ffn_gate"), &[EMBD, FF], &random(&[EMBD, FF], 0.3)));
                t.push(f32_tensor(&n("ffn_up"), &[EMBD, FF], &random(&[EMBD, FF], 0.3)));
            }
            t.push(f32_tensor(&n("ffn_down"), &[FF, EMBD], &random(&[FF, EMBD], 0.3)));
            if arch == "gemma3" {
                t.push(f32_tensor(&n("post_attention_norm"), &[EMBD], &norm(&mut random, EMBD)));
                t.push(f32_tensor(&n("post_ffw_norm"), &[EMBD], &norm(&mut random, EMBD)));
            }
        }
        t.push(f32_tensor("output_norm.weight", &[EMBD], &norm(&mut random, EMBD)));
        if arch == "llama" || arch == "phi3" {
            t.push(f32_tensor("output.weight", &[EMBD, n_vocab], &random(&[EMBD, n_vocab], 0.5)));
        }
        Tiny { arch, kvs, tensors: t }
    }

    fn set(mut self, key: &str, value: Value) -> Self {
        let key = key.replace("ARCH", self.arch);
        self.kvs.retain(|(k, _)| *k != key);
        self.kvs.push((key, value));
        self
    }

    fn with_tensor(mut self, name: &str, data: &[f32]) -> Self {
        self.tensors.retain(|t| t.name != name);
        self.tensors.push(f32_tensor(name, &[data.len()], data));
        self
    }

    fn load(&self) -> Result<LlmModel> {
        let bytes = write(&self.kvs, &self.tensors);
        let path = Path::new("tiny.gguf");
        let header = parse(&bytes, path)?;
        let placement = Placement::cpu(LAYERS);
        LlmModel::load(path, &header, &FileBytes::Owned(bytes), &placement, false, &mut Progress::new(None), 0.0)
    }
}

/// Logits at every position of `tokens`, evaluated in chunks of `batch`.
fn logits(model: &LlmModel, tokens: &[u32], batch: usize) -> Vec<f32> {
    let p = &model.params;
    let mut session = LlmSession::new(model, CONTEXT, batch, p.rope_freq_base, p.rope_freq_scale).unwrap();
    model.evaluate(&mut session, tokens).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn load_error(tiny: &Tiny) -> String {
    match tiny.load() {
        Err(e @ Error::ModelLoad { .. }) => e.to_string(),
        Err(other) => panic!("expected a load error, got {other:?}"),
        Ok(_) => panic!("expected a load error, the model loaded"),
    }
}

fn every_architecture() -> Vec<Tiny> {
    vec![
        Tiny::new("llama", 16),
        Tiny::new("qwen2", 16),
        Tiny::new("qwen3", 32),
        Tiny::new("phi3", 16),
        Tiny::new("gemma3", 32).set("ARCH.attention.sliding_window", Value::U32(4)),
    ]
}

#[test]
fn every_architecture_loads_and_prefills_in_chunks_as_in_one_go() {
    for tiny in every_architecture() {
        let model = tiny.load().unwrap_or_else(|e| panic!("{}: {e}", tiny.arch));
        let whole = logits(&model, &TOKENS, TOKENS.len());
        assert_eq!(whole.len(), TOKENS.len() * model.params.vocab);
        assert!(whole.iter().all(|v| v.is_finite()), "{}", tiny.arch);
        // Chunks of 1 and 5 go through the KV cache (and the sliding window's masks at every offset).
        // Only the summation order differs (and with it, now and then, an f16 rounding of K, V or a probability).
        let scale = whole.iter().fold(0f32, |m, v| m.max(v.abs()));
        for batch in [1, 5] {
            let diff = max_diff(&whole, &logits(&model, &TOKENS, batch));
            assert!(diff < 2e-3 * scale, "{} batch {batch}: {diff} of {scale}", tiny.arch);
        }
    }
}

#[test]
fn instances_with_the_same_rope_share_its_tables() {
    let model = Tiny::new("gemma3", 32).set("ARCH.attention.sliding_window", Value::U32(4)).load().unwrap();
    let p = &model.params;
    let session = |ctx: usize, base: f64| LlmSession::new(&model, ctx, 8, base, p.rope_freq_scale).unwrap();
    let (a, b) = (session(CONTEXT, p.rope_freq_base), session(CONTEXT, p.rope_freq_base));
    assert!(Arc::ptr_eq(&a.ropes, &b.ropes));
    assert!(!Arc::ptr_eq(&a.ropes, &session(CONTEXT / 2, p.rope_freq_base).ropes));
    let other_base = session(CONTEXT, p.rope_freq_base * 2.0);
    assert!(!Arc::ptr_eq(&a.ropes, &other_base.ropes));
    // Shared tables compute what an instance's own would: the same logits from either session.
    let mut b = b;
    let mut fresh = session(CONTEXT / 2, p.rope_freq_base);
    assert_eq!(model.evaluate(&mut b, &TOKENS).unwrap(), model.evaluate(&mut fresh, &TOKENS).unwrap());
    // Tables no instance holds any more are dropped, not kept for the model's lifetime.
    let weak = Arc::downgrade(&a.ropes);
    drop((a, b));
    assert!(weak.upgrade().is_none());
}

#[test]
fn a_sliding_window_hides_exactly_the_keys_behind_it() {
    // The same RoPE base on local and global layers, so only the window differs.
    let full = Tiny::new("gemma3", 32).set("ARCH.rope.freq_base_swa", Value::F32(10_000.0));
    let window = 4;
    let sliding = Tiny::new("gemma3", 32)
        .set("ARCH.rope.freq_base_swa", Value::F32(10_000.0))
        .set("ARCH.attention.sliding_window", Value::U32(window as u32));
    let (a, b) = (logits(&full.load().unwrap(), &TOKENS, 12), logits(&sliding.load().unwrap(), &TOKENS, 12));
    let vocab = a.len() / TOKENS.len();
    for pos in 0..TOKENS.len() {
        let row = pos * vocab..(pos + 1) * vocab;
        let diff = max_diff(&a[row.clone()], &b[row]);
        if pos < window {
            assert!(diff < 1e-5, "position {pos} sees all its keys either way: {diff}");
        } else {
            assert!(diff > 1e-3, "position {pos} lost keys to the window: {diff}");
        }
    }
    // Every layer full (a pattern of 1) is the model without a window.
    let none = sliding.set("ARCH.attention.sliding_window_pattern", Value::U32(1));
    assert!(max_diff(&a, &logits(&none.load().unwrap(), &TOKENS, 12)) < 1e-5);
}

#[test]
fn gemma3_local_layers_rotate_with_their_own_base() {
    let base = |swa: f32| {
        let tiny = Tiny::new("gemma3", 32)
            .set("ARCH.attention.sliding_window", Value::U32(64))
            .set("ARCH.rope.freq_base_swa", Value::F32(swa));
        logits(&tiny.load().unwrap(), &TOKENS, 12)
    };
    assert!(max_diff(&base(10_000.0), &base(1_000.0)) > 1e-3);
    // Per-layer flags: none sliding is the model without a window.
    let flags = Tiny::new("gemma3", 32)
        .set("ARCH.attention.sliding_window", Value::U32(4))
        .set("ARCH.attention.sliding_window_pattern", Value::Array(vec![Value::Bool(false); LAYERS]));
    let plain = Tiny::new("gemma3", 32);
    assert!(
        max_diff(&logits(&flags.load().unwrap(), &TOKENS, 12), &logits(&plain.load().unwrap(), &TOKENS, 12)) < 1e-5
    );
    let short = Tiny::new("gemma3", 32)
        .set("ARCH.attention.sliding_window", Value::U32(4))
        .set("ARCH.attention.sliding_window_pattern", Value::Array(vec![Value::Bool(true)]));
    assert!(load_error(&short).contains("1 entries for 3 layers"));
}

#[test]
fn a_fused_projection_computes_what_the_separate_ones_do() {
    let separate = Tiny::new("llama", 16);
    let mut fused = Tiny::new("llama", 16);
    for i in 0..LAYERS {
        let take = |tiny: &mut Tiny, part: &str| {
            let name = format!("blk.{i}.{part}.weight");
            let at = tiny.tensors.iter().position(|t| t.name == name).unwrap();
            tiny.tensors.remove(at).data
        };
        // ggml stores a matrix row by row of its output: the fused one is the three, one after the other.
        let mut data = take(&mut fused, "attn_q");
        data.extend(take(&mut fused, "attn_k"));
        data.extend(take(&mut fused, "attn_v"));
        let rows = (HEADS + 2 * KV_HEADS) * 16;
        fused.tensors.push(TensorSpec {
            name: format!("blk.{i}.attn_qkv.weight"),
            dims: vec![EMBD as u64, rows as u64],
            type_id: 0,
            data,
        });
    }
    let (a, b) = (logits(&separate.load().unwrap(), &TOKENS, 12), logits(&fused.load().unwrap(), &TOKENS, 12));
    assert!(max_diff(&a, &b) < 1e-5, "{}", max_diff(&a, &b));
}

#[test]
fn optional_biases_are_added() {
    let plain = logits(&Tiny::new("llama", 16).load().unwrap(), &TOKENS, 12);
    for (name, len) in [
        ("blk.1.attn_output.bias", EMBD),
        ("blk.1.ffn_gate.bias", FF),
        ("blk.1.ffn_up.bias", FF),
        ("blk.1.ffn_down.bias", EMBD),
        ("output.bias", vocab().len()),
    ] {
        let zero = Tiny::new("llama", 16).with_tensor(name, &vec![0.0; len]);
        assert_eq!(plain, logits(&zero.load().unwrap(), &TOKENS, 12), "{name}");
        let some = Tiny::new("llama", 16).with_tensor(name, &values(9, len, 0.5));
        assert!(max_diff(&plain, &logits(&some.load().unwrap(), &TOKENS, 12)) > 1e-3, "{name}");
    }
}

#[test]
fn llama3_rope_factors_are_applied() {
    let plain = logits(&Tiny::new("llama", 16).load().unwrap(), &TOKENS, 12);
    let ones = Tiny::new("llama", 16).with_tensor("rope_freqs.weight", &[1.0; 8]);
    assert_eq!(plain, logits(&ones.load().unwrap(), &TOKENS, 12));
    let factors = [1.0, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0];
    let scaled = Tiny::new("llama", 16).with_tensor("rope_freqs.weight", &factors);
    assert!(max_diff(&plain, &logits(&scaled.load().unwrap(), &TOKENS, 12)) > 1e-3);
    let bad = Tiny::new("llama", 16).with_tensor("rope_freqs.weight", &[0.0; 8]);
    assert!(load_error(&bad).contains("not a positive frequency factor"));
    let short = Tiny::new("llama", 16).with_tensor("rope_freqs.weight", &[1.0; 4]);
    assert!(load_error(&short).contains("rope_freqs.weight has shape [4], expected [8]"));
}

#[test]
fn phi3_switches_to_its_long_factors_past_the_original_context() {
    let config = RopeConfig {
        style: RopeStyle::Neox,
        dims: 4,
        base: 10_000.0,
        scale: 1.0,
        attn_factor: 1.0,
        factors: Some(vec![1.0, 1.0]),
    };
    let setup = RopeSetup { full: config, long_factors: Some(vec![4.0, 4.0]), original_context: 8, sliding: None };
    let x = candle_core::Tensor::ones((1, 1, 1, 4), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let at = |ctx: usize| {
        let tables = setup.tables(ctx, 10_000.0, 1.0).unwrap();
        tables.full.apply(&x, 5).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    assert_eq!(at(8), at(6), "within the original context: the short factors");
    assert!(max_diff(&at(8), &at(9)) > 1e-3, "past it: the long factors");
}

#[test]
fn tensors_left_unread_fail_the_load() {
    let extra = Tiny::new("llama", 16).with_tensor("blk.0.ffn_norm.bias", &[0.5; EMBD]);
    let err = load_error(&extra);
    assert!(err.contains("does not use") && err.contains("blk.0.ffn_norm.bias"), "{err}");
    // Phi-3-style factor tables in a llama file without longrope scaling are not what llama.cpp reads either.
    let long = Tiny::new("llama", 16).with_tensor("rope_factors_long.weight", &[1.0; 8]);
    assert!(load_error(&long).contains("rope_factors_long.weight"));
    let missing = Tiny {
        tensors: Tiny::new("qwen3", 32).tensors.into_iter().filter(|t| !t.name.contains("q_norm")).collect(),
        ..Tiny::new("qwen3", 32)
    };
    assert!(load_error(&missing).contains("tensor blk.0.attn_q_norm.weight is missing"));
}

#[test]
fn keys_for_what_is_not_run_fail_the_load() {
    let err = load_error(&Tiny::new("llama", 16).set("general.architecture", Value::String("mamba".into())));
    assert!(err.contains("\"mamba\" is not supported (supported: llama, qwen2, qwen3, phi3, gemma3)"), "{err}");
    let cases = [
        ("ARCH.expert_count", Value::U32(8), "mixture of experts"),
        ("ARCH.rope.scaling.type", Value::String("yarn".into()), "RoPE scaling \"yarn\""),
        ("ARCH.attention.causal", Value::Bool(false), "non-causal"),
        ("ARCH.attention.head_count_kv", Value::Array(vec![Value::U32(2); LAYERS]), "head_count_kv"),
        ("ARCH.attention.value_length", Value::U32(8), "value head size"),
        ("ARCH.rope.dimension_count", Value::U32(8), "rope.dimension_count 8 is not the head size 16"),
        ("ARCH.rope.freq_base", Value::String("x".into()), "rope.freq_base"),
    ];
    for (key, value, expect) in cases {
        let err = load_error(&Tiny::new("llama", 16).set(key, value));
        assert!(err.contains(expect), "{key}: {err}");
    }
    let err = load_error(&Tiny::new("gemma3", 32).set("ARCH.attn_logit_softcapping", Value::F32(50.0)));
    assert!(err.contains("attn_logit_softcapping"), "{err}");
}

#[test]
fn linear_rope_scaling_follows_llama_cpp() {
    let model = Tiny::new("llama", 16).set("ARCH.rope.scaling.factor", Value::F32(4.0)).load().unwrap();
    assert_eq!(model.params.rope_freq_scale, 0.25, "no type means linear");
    let model = Tiny::new("llama", 16)
        .set("ARCH.rope.scaling.factor", Value::F32(4.0))
        .set("ARCH.rope.scaling.type", Value::String("none".into()))
        .load()
        .unwrap();
    assert_eq!(model.params.rope_freq_scale, 1.0);
    // Partial rotation is allowed where llama.cpp allows it (NeoX-style architectures).
    let model = Tiny::new("phi3", 16).set("ARCH.rope.dimension_count", Value::U32(8)).load().unwrap();
    assert_eq!(model.params.rope_dims, 8);
    assert_eq!(Architecture::ALL.map(Architecture::name), ["llama", "qwen2", "qwen3", "phi3", "gemma3"]);
}

#[test]
fn gemma3_without_a_template_chats_in_gemma_turns_and_a_template_bos_is_not_doubled() {
    let model = Tiny::new("gemma3", 32).load().unwrap();
    let chat = [
        ChatMessage { role: "system".into(), content: " Be brief. ".into() },
        ChatMessage { role: "user".into(), content: "hi".into() },
        ChatMessage { role: "assistant".into(), content: "hi ".into() },
    ];
    let rendered = model.apply_template(&chat, true).unwrap();
    assert_eq!(
        rendered,
        "<start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\nhi<end_of_turn>\n<start_of_turn>model\n"
    );
    // The tokenizer adds BOS; a template that writes it first does not get a second one.
    let with_bos = Tiny::new("gemma3", 32)
        .set(
            "tokenizer.chat_template",
            Value::String("{{ bos_token }}<start_of_turn>{{ messages[0]['content'] }}".into()),
        )
        .load()
        .unwrap();
    let ids = with_bos.chat_prompt_ids(&chat[1..2]).unwrap();
    assert_eq!(ids[..2], [1, 259], "{ids:?}");
    assert_eq!(with_bos.tokenizer.encode("<s><start_of_turn>", true).unwrap()[..2], [1, 1]);
}
