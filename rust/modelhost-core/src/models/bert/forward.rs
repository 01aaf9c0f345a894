//! The encoder's forward pass over packed sequences (no padding): embeddings, then per layer attention and the
//! feed-forward block, each followed by a residual layer norm, on the f32 kernels of `kernels`.

use rayon::prelude::*;

use super::folder::BertConfig;
use super::weights::{BertView, EncoderLayer};
use crate::kernels::f32_attention;
#[cfg(target_arch = "x86_64")]
use crate::kernels::f32_avx512;
use crate::kernels::f32_matmul::{project, Projection};
use crate::kernels::f32_ops::{self, layer_norm_row, MIN_ROWS};

/// Activations for one batch, grown to the longest batch of the request and reused. Each path uses its own.
#[derive(Default)]
pub(super) struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    heads: Vec<f32>,
    ctx: Vec<f32>,
    tmp: Vec<f32>,
    inter: Vec<f32>,
    /// The AVX-512 path's hidden state, attention's output, matrix outputs and feed-forward activations, as
    /// token panels.
    x_panels: Vec<f32>,
    ctx_panels: Vec<f32>,
    tmp_panels: Vec<f32>,
    inter_panels: Vec<f32>,
}

impl Scratch {
    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        let buffers = [&self.x, &self.qkv, &self.heads, &self.ctx, &self.tmp, &self.inter];
        let panels = [&self.x_panels, &self.ctx_panels, &self.tmp_panels, &self.inter_panels];
        buffers.iter().chain(&panels).map(|v| v.capacity() * size_of::<f32>()).sum()
    }
}

/// The first `n` floats of `v`, grown (zeroed) if it is shorter.
fn take(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
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

/// The layers' matrices packed for the AVX-512 kernels (`f32_avx512::PackedWeights`).
#[cfg(target_arch = "x86_64")]
pub(super) struct PanelWeights {
    layers: Vec<PanelLayer>,
}

#[cfg(target_arch = "x86_64")]
struct PanelLayer {
    q: f32_avx512::PackedWeights,
    k: f32_avx512::PackedWeights,
    v: f32_avx512::PackedWeights,
    o: f32_avx512::PackedWeights,
    up: f32_avx512::PackedWeights,
    down: f32_avx512::PackedWeights,
}

#[cfg(target_arch = "x86_64")]
impl PanelWeights {
    /// Pack every layer's matrices.
    ///
    /// Panics unless the CPU has AVX-512F (`super::packs_layers`).
    pub(super) fn pack(w: &BertView<'_>, c: &BertConfig) -> Self {
        use f32_avx512::PackedWeights;
        let (h, ffn) = (c.hidden_size, c.intermediate_size);
        let layers = w
            .layers
            .iter()
            .map(|l| PanelLayer {
                q: PackedWeights::pack(l.q_w, h, h),
                k: PackedWeights::pack(l.k_w, h, h),
                v: PackedWeights::pack(l.v_w, h, h),
                o: PackedWeights::pack(l.o_w, h, h),
                up: PackedWeights::pack(l.i_w, ffn, h),
                down: PackedWeights::pack(l.out_w, h, ffn),
            })
            .collect();
        PanelWeights { layers }
    }
}

/// The matrices `forward` runs on: packed for the AVX-512 kernels, or the rows in place (`gemm`).
#[derive(Clone, Copy)]
pub(super) enum Matrices<'a> {
    #[cfg(target_arch = "x86_64")]
    Panels(&'a PanelWeights),
    Rows(std::marker::PhantomData<&'a ()>),
}

/// Run the encoder over packed sequences (no padding); returns the final hidden states, `[T, hidden]`.
pub(super) fn forward<'s>(
    w: &BertView<'_>,
    m: Matrices<'_>,
    c: &BertConfig,
    seqs: &[(&[u32], &[u32])],
    s: &'s mut Scratch,
) -> &'s [f32] {
    let h = c.hidden_size;
    let t: usize = seqs.iter().map(|(ids, _)| ids.len()).sum();
    embed(w, seqs, h, c.layer_norm_eps, take(&mut s.x, t * h));
    let spans: Vec<(usize, usize)> = seqs
        .iter()
        .scan(0, |start, (ids, _)| {
            let span = (*start, ids.len());
            *start += ids.len();
            Some(span)
        })
        .collect();
    match m {
        #[cfg(target_arch = "x86_64")]
        Matrices::Panels(packed) => layers_in_panels(w, packed, c, t, &spans, s),
        Matrices::Rows(_) => layers_in_rows(w, c, t, &spans, s),
    }
    &s.x[..t * h]
}

/// The layers over token rows (`f32_matmul::project` picks the kernels).
fn layers_in_rows(w: &BertView<'_>, c: &BertConfig, t: usize, spans: &[(usize, usize)], s: &mut Scratch) {
    let (h, ffn, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
    let x = &mut s.x[..t * h];
    let qkv = take(&mut s.qkv, t * 3 * h);
    let heads = take(&mut s.heads, t * h);
    let ctx = take(&mut s.ctx, t * h);
    let tmp = take(&mut s.tmp, t * h);
    let inter = take(&mut s.inter, t * ffn);
    let one = |w, b| [Projection { w, b, col0: 0 }];
    for l in &w.layers {
        project(x, t, h, &qkv_projections(l, h), qkv, 3 * h, None);
        f32_attention::attention(qkv, spans, c.num_attention_heads, h, heads, ctx);
        project(ctx, t, h, &one(l.o_w, l.o_b), tmp, h, None);
        f32_ops::add_layer_norm(x, tmp, l.ln1_g, l.ln1_b, eps);
        project(x, t, h, &one(l.i_w, l.i_b), inter, ffn, Some(c.activation));
        project(inter, t, ffn, &one(l.out_w, l.out_b), tmp, h, None);
        f32_ops::add_layer_norm(x, tmp, l.ln2_g, l.ln2_b, eps);
    }
}

/// The layers with the hidden state kept in the AVX-512 kernels' token panels, which every step reads and
/// writes: products, attention and layer norms.
#[cfg(target_arch = "x86_64")]
fn layers_in_panels(
    w: &BertView<'_>,
    packed: &PanelWeights,
    c: &BertConfig,
    t: usize,
    spans: &[(usize, usize)],
    s: &mut Scratch,
) {
    use f32_avx512::{
        add_layer_norm_panels, attention_panels, linear, pack_tokens, unpack_tokens, PanelProjection, LANES,
    };
    let (h, ffn, eps, n_heads) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps, c.num_attention_heads);
    let rows = t.div_ceil(LANES) * LANES;
    let xp = &mut s.x_panels;
    pack_tokens(&s.x[..t * h], t, h, xp);
    let qkv = take(&mut s.qkv, rows * 3 * h);
    let ctx = take(&mut s.ctx_panels, rows * h);
    let tmp = take(&mut s.tmp_panels, rows * h);
    let inter = take(&mut s.inter_panels, rows * ffn);
    let one = |w, b| [PanelProjection { w, b, col0: 0 }];
    for (l, m) in w.layers.iter().zip(&packed.layers) {
        let qkv_projections = [
            PanelProjection { w: &m.q, b: l.q_b, col0: 0 },
            PanelProjection { w: &m.k, b: l.k_b, col0: h },
            PanelProjection { w: &m.v, b: l.v_b, col0: 2 * h },
        ];
        linear(xp, t, h, &qkv_projections, qkv, 3 * h, None);
        attention_panels(qkv, t, spans, n_heads, h, ctx);
        linear(ctx, t, h, &one(&m.o, l.o_b), tmp, h, None);
        add_layer_norm_panels(xp, tmp, l.ln1_g, l.ln1_b, eps);
        linear(xp, t, h, &one(&m.up, l.i_b), inter, ffn, Some(c.activation));
        linear(inter, t, ffn, &one(&m.down, l.out_b), tmp, h, None);
        add_layer_norm_panels(xp, tmp, l.ln2_g, l.ln2_b, eps);
    }
    unpack_tokens(xp, t, h, &mut s.x[..t * h]);
}

/// A layer's query, key and value projections, side by side in one `[T, 3h]` output.
fn qkv_projections<'w>(l: &EncoderLayer<&'w [f32]>, h: usize) -> [Projection<'w>; 3] {
    [
        Projection { w: l.q_w, b: l.q_b, col0: 0 },
        Projection { w: l.k_w, b: l.k_b, col0: h },
        Projection { w: l.v_w, b: l.v_b, col0: 2 * h },
    ]
}
