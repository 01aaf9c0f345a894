//! The encoder's forward pass over packed sequences (no padding): embeddings, then per layer attention and the
//! feed-forward block, each followed by a residual layer norm, on the f32 kernels of `kernels`.

use rayon::prelude::*;

use super::folder::BertConfig;
use super::weights::BertView;
use crate::kernels::f32_ops::{self, layer_norm_row, MIN_ROWS};
use crate::kernels::{f32_attention, f32_matmul};

/// Activations for one batch, sized for the longest batch of the request and reused.
pub(super) struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    heads: Vec<f32>,
    ctx: Vec<f32>,
    tmp: Vec<f32>,
    inter: Vec<f32>,
}

impl Scratch {
    pub(super) fn new(tokens: usize, c: &BertConfig) -> Self {
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
        let word = &w.embeddings.word[id as usize * h..][..h];
        let ty = &w.embeddings.token_type[tt as usize * h..][..h];
        let pos = &w.embeddings.position[p * h..][..h];
        for (((o, a), b), c) in row.iter_mut().zip(word).zip(ty).zip(pos) {
            *o = (a + b) + c;
        }
        layer_norm_row(row, w.embeddings.ln_g, w.embeddings.ln_b, eps);
    });
}

/// Run the encoder over packed sequences (no padding); returns the final hidden states, `[T, hidden]`.
pub(super) fn forward<'s>(
    w: &BertView<'_>,
    c: &BertConfig,
    seqs: &[(&[u32], &[u32])],
    s: &'s mut Scratch,
) -> &'s [f32] {
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
