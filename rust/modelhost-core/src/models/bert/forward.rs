//! The encoder's forward pass over packed sequences (no padding): embeddings, then per layer attention and the
//! feed-forward block, each followed by a residual layer norm, on the f32 kernels of `kernels`.

use rayon::prelude::*;

use super::folder::BertConfig;
use super::weights::BertView;
use crate::kernels::f32_attention;
use crate::kernels::f32_matmul::{project, Projection};
use crate::kernels::f32_ops::{self, layer_norm_row, MIN_ROWS};

/// Activations for one batch, sized for the longest batch of the request and reused.
pub(super) struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    heads: Vec<f32>,
    ctx: Vec<f32>,
    tmp: Vec<f32>,
    inter: Vec<f32>,
    /// The current matrix input rearranged for the AVX-512 kernels.
    packed: Vec<f32>,
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
            packed: Vec::new(),
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
    let packed = &mut s.packed;
    let ffn = c.intermediate_size;
    let one = |w, b| [Projection { w, b, col0: 0 }];
    for l in &w.layers {
        let qkv_proj = [
            Projection { w: l.q_w, b: l.q_b, col0: 0 },
            Projection { w: l.k_w, b: l.k_b, col0: h },
            Projection { w: l.v_w, b: l.v_b, col0: 2 * h },
        ];
        project(x, t, h, &qkv_proj, qkv, 3 * h, None, packed);
        f32_attention::attention(qkv, &spans, c.num_attention_heads, h, heads, ctx);
        project(ctx, t, h, &one(l.o_w, l.o_b), tmp, h, None, packed);
        f32_ops::add_layer_norm(x, tmp, l.ln1_g, l.ln1_b, eps);
        project(x, t, h, &one(l.i_w, l.i_b), inter, ffn, Some(c.activation), packed);
        project(inter, t, ffn, &one(l.out_w, l.out_b), tmp, h, None, packed);
        f32_ops::add_layer_norm(x, tmp, l.ln2_g, l.ln2_b, eps);
    }
    &s.x[..t * h]
}
