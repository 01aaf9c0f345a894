//! BERT's weights: which tensors the encoder needs (planned from the safetensors header before any weight
//! byte is read), and how they become f32 slices: views into the file's bytes where they are f32, little-endian
//! and aligned, converted copies elsewhere.

use std::ops::Range;
use std::path::Path;

use super::folder::{is_float, BertConfig, Folder};
use super::READ_SHARE;
use crate::error::{Error, Result};
use crate::formats::safetensors::{self as st, Dtype, SafeTensorInfo, SafetensorsHeader};
use crate::storage::{self, ChunkedLoad, FileBytes, Progress};

/// Bytes of weights touched (or converted) between two progress reports.
const LOAD_CHUNK: usize = 1 << 20;

/// The embedding tensors, as plan indices, loaded weights or f32 slices (`T`).
#[derive(Debug)]
pub(super) struct Embeddings<T> {
    /// `embeddings.word_embeddings.weight`, `[vocab, hidden]`.
    pub(super) word: T,
    /// `embeddings.position_embeddings.weight`, `[max_position_embeddings, hidden]`.
    pub(super) position: T,
    /// `embeddings.token_type_embeddings.weight`, `[type_vocab_size, hidden]`.
    pub(super) token_type: T,
    /// `embeddings.LayerNorm.{weight,bias}`.
    pub(super) ln_g: T,
    pub(super) ln_b: T,
}

/// One encoder layer's tensors (`encoder.layer.N.*`), as plan indices, loaded weights or f32 slices (`T`).
#[derive(Debug)]
pub(super) struct EncoderLayer<T> {
    /// `attention.self.{query,key,value}.{weight,bias}`.
    pub(super) q_w: T,
    pub(super) q_b: T,
    pub(super) k_w: T,
    pub(super) k_b: T,
    pub(super) v_w: T,
    pub(super) v_b: T,
    /// `attention.output.dense.{weight,bias}`.
    pub(super) o_w: T,
    pub(super) o_b: T,
    /// `attention.output.LayerNorm.{weight,bias}`.
    pub(super) ln1_g: T,
    pub(super) ln1_b: T,
    /// `intermediate.dense.{weight,bias}`.
    pub(super) i_w: T,
    pub(super) i_b: T,
    /// `output.dense.{weight,bias}`.
    pub(super) out_w: T,
    pub(super) out_b: T,
    /// `output.LayerNorm.{weight,bias}`.
    pub(super) ln2_g: T,
    pub(super) ln2_b: T,
}

/// Every tensor of the encoder, as plan indices, loaded weights or f32 slices (`T`).
#[derive(Debug)]
pub(super) struct BertTensors<T> {
    pub(super) embeddings: Embeddings<T>,
    pub(super) layers: Vec<EncoderLayer<T>>,
}

impl<T> Embeddings<T> {
    fn map<U>(self, mut f: impl FnMut(T) -> U) -> Embeddings<U> {
        let Embeddings { word, position, token_type, ln_g, ln_b } = self;
        Embeddings { word: f(word), position: f(position), token_type: f(token_type), ln_g: f(ln_g), ln_b: f(ln_b) }
    }

    fn as_ref(&self) -> Embeddings<&T> {
        let Embeddings { word, position, token_type, ln_g, ln_b } = self;
        Embeddings { word, position, token_type, ln_g, ln_b }
    }
}

impl<T> EncoderLayer<T> {
    fn map<U>(self, mut f: impl FnMut(T) -> U) -> EncoderLayer<U> {
        let EncoderLayer { q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln1_g, ln1_b, i_w, i_b, out_w, out_b, ln2_g, ln2_b } =
            self;
        EncoderLayer {
            q_w: f(q_w),
            q_b: f(q_b),
            k_w: f(k_w),
            k_b: f(k_b),
            v_w: f(v_w),
            v_b: f(v_b),
            o_w: f(o_w),
            o_b: f(o_b),
            ln1_g: f(ln1_g),
            ln1_b: f(ln1_b),
            i_w: f(i_w),
            i_b: f(i_b),
            out_w: f(out_w),
            out_b: f(out_b),
            ln2_g: f(ln2_g),
            ln2_b: f(ln2_b),
        }
    }

    fn as_ref(&self) -> EncoderLayer<&T> {
        let EncoderLayer { q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln1_g, ln1_b, i_w, i_b, out_w, out_b, ln2_g, ln2_b } =
            self;
        EncoderLayer { q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln1_g, ln1_b, i_w, i_b, out_w, out_b, ln2_g, ln2_b }
    }
}

impl<T> BertTensors<T> {
    fn map<U>(self, mut f: impl FnMut(T) -> U) -> BertTensors<U> {
        BertTensors {
            embeddings: self.embeddings.map(&mut f),
            layers: self.layers.into_iter().map(|l| l.map(&mut f)).collect(),
        }
    }
}

/// One weight tensor as f32: a view into the file's bytes, or a converted copy.
#[derive(Debug)]
pub(super) enum Weight {
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

/// The loaded weights of the encoder.
pub(super) type BertWeights = BertTensors<Weight>;
/// The weights resolved to slices for one request.
pub(super) type BertView<'a> = BertTensors<&'a [f32]>;

impl BertWeights {
    /// Every weight as a slice, `file` being the model's bytes that views point into.
    pub(super) fn view<'a>(&'a self, file: &'a [u8]) -> BertView<'a> {
        BertTensors {
            embeddings: self.embeddings.as_ref().map(|w| w.get(file)),
            layers: self.layers.iter().map(|l| l.as_ref().map(|w| w.get(file))).collect(),
        }
    }
}

/// Picks the tensors the encoder needs out of a header, checking names, shapes and dtypes before
/// any weight byte is touched.
pub(super) struct Planner<'h> {
    header: &'h SafetensorsHeader,
    path: &'h Path,
    prefix: String,
    wanted: Vec<&'h SafeTensorInfo>,
}

impl<'h> Planner<'h> {
    pub(super) fn new(header: &'h SafetensorsHeader, path: &'h Path) -> Result<Self> {
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

/// Which of the planner's tensors (by index into `Planner::wanted`) each part of the model is.
pub(super) type BertPlan = BertTensors<usize>;

/// Plan every tensor of the encoder `c` describes; the tensors are listed in this order for loading.
pub(super) fn plan_weights(planner: &mut Planner<'_>, c: &BertConfig) -> Result<BertPlan> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let embeddings = Embeddings {
        word: planner.take("embeddings.word_embeddings.weight", &[c.vocab_size, h])?,
        position: planner.take("embeddings.position_embeddings.weight", &[c.max_position_embeddings, h])?,
        token_type: planner.take("embeddings.token_type_embeddings.weight", &[c.type_vocab_size, h])?,
        ln_g: planner.take("embeddings.LayerNorm.weight", &[h])?,
        ln_b: planner.take("embeddings.LayerNorm.bias", &[h])?,
    };
    let mut layers = Vec::new();
    for l in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{l}.");
        let mut t = |suffix: &str, shape: &[usize]| planner.take(&format!("{p}{suffix}"), shape);
        layers.push(EncoderLayer {
            q_w: t("attention.self.query.weight", &[h, h])?,
            q_b: t("attention.self.query.bias", &[h])?,
            k_w: t("attention.self.key.weight", &[h, h])?,
            k_b: t("attention.self.key.bias", &[h])?,
            v_w: t("attention.self.value.weight", &[h, h])?,
            v_b: t("attention.self.value.bias", &[h])?,
            o_w: t("attention.output.dense.weight", &[h, h])?,
            o_b: t("attention.output.dense.bias", &[h])?,
            ln1_g: t("attention.output.LayerNorm.weight", &[h])?,
            ln1_b: t("attention.output.LayerNorm.bias", &[h])?,
            i_w: t("intermediate.dense.weight", &[i, h])?,
            i_b: t("intermediate.dense.bias", &[i])?,
            out_w: t("output.dense.weight", &[h, i])?,
            out_b: t("output.dense.bias", &[h])?,
            ln2_g: t("output.LayerNorm.weight", &[h])?,
            ln2_b: t("output.LayerNorm.bias", &[h])?,
        });
    }
    Ok(BertTensors { embeddings, layers })
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
pub(super) fn f16_to_f32(h: u16) -> f32 {
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
            // rest measured slower than the kernel's fault-around (benches/results/profile.md).
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

/// The file's bytes, the weights (views into them or copies), and the header they were planned from.
pub(super) type LoadedWeights = (FileBytes, BertWeights, SafetensorsHeader);

/// Map (or read) the weights file, plan its tensors and make them usable, reporting progress.
pub(super) fn load_weights(folder: &Folder, try_mmap: bool, progress: &mut Progress<'_>) -> Result<LoadedWeights> {
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
    let weights = plan.map(|i| std::mem::replace(&mut loaded[i], Weight::Owned(Vec::new())));
    drop(planner);
    Ok((bytes, weights, header))
}
