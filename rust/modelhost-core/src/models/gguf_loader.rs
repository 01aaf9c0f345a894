//! The GGUF tensor loader every decoder architecture loads its weights with: tensors by llama.cpp name, shapes
//! checked, matrices on the CPU used in place from the file's mapping by our kernels (their pages read in now,
//! with progress), matrices on a GPU copied for candle, vectors dequantized to f32. It records which tensors were
//! read, so that a tensor an architecture does not use (a RoPE factor table, a bias) fails the load instead of
//! being silently ignored.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, QMatMul, QTensor};
use candle_core::{Device, Tensor};

use super::blocks::linear::Linear;
use crate::error::{Error, Result};
use crate::formats::gguf::{GgufHeader, TensorInfo};
use crate::kernels::blocks::dequantize_row;
use crate::kernels::matrix::WeightMatrix;
use crate::storage::{self, ChunkedLoad, FileBytes, Progress};

/// Bytes read in (and reported to progress) at a time when a tensor is used in place.
const POPULATE_CHUNK: usize = 4 << 20;

/// Reads the tensors of a validated GGUF header out of the file's bytes, checking each one's shape and that the
/// file is unchanged, and reports progress as it goes.
pub(crate) struct GgufLoader<'a, 'p, 'q> {
    header: &'a GgufHeader,
    bytes: &'a FileBytes,
    path: &'a Path,
    chunks: ChunkedLoad<'p, 'q>,
    /// Names of the tensors read so far.
    used: HashSet<&'a str>,
}

impl<'a, 'p, 'q> GgufLoader<'a, 'p, 'q> {
    /// A loader over `bytes` (the file `path`, whose header is `header`), reporting progress over
    /// `[base, 1)` of the bar as tensor bytes land.
    pub(crate) fn new(
        header: &'a GgufHeader,
        bytes: &'a FileBytes,
        path: &'a Path,
        progress: &'p mut Progress<'q>,
        base: f32,
    ) -> Self {
        let chunks = ChunkedLoad::new(progress, header.tensor_bytes(), base, 1.0 - base);
        GgufLoader { header, bytes, path, chunks, used: HashSet::new() }
    }

    /// The file's header (architectures read their own keys from it).
    pub(crate) fn header(&self) -> &'a GgufHeader {
        self.header
    }

    /// The file's path, for errors.
    pub(crate) fn path(&self) -> &'a Path {
        self.path
    }

    /// The header entry of tensor `name`; a load error naming it if it is missing.
    pub(crate) fn info(&self, name: &str) -> Result<&'a TensorInfo> {
        self.header.tensor(name).ok_or_else(|| Error::load(self.path, format!("tensor {name} is missing")))
    }

    /// The header entry of tensor `name`, recorded as used.
    fn take(&mut self, name: &str) -> Result<&'a TensorInfo> {
        let info = self.info(name)?;
        self.used.insert(info.name.as_str());
        Ok(info)
    }

    /// A load error unless every tensor of the file was read: one the architecture does not use would otherwise
    /// be ignored, and the model would compute something else than its authors (and llama.cpp) do.
    pub(crate) fn finish(&self, architecture: &str) -> Result<()> {
        let unused: Vec<&str> =
            self.header.tensors.iter().map(|t| t.name.as_str()).filter(|n| !self.used.contains(n)).collect();
        match unused.as_slice() {
            [] => Ok(()),
            names => Err(Error::load(
                self.path,
                format!(
                    "{} tensor(s) that modelhost's {architecture} does not use, so it would compute something else \
                     than the model: {}{}",
                    names.len(),
                    names.iter().take(8).copied().collect::<Vec<_>>().join(", "),
                    if names.len() > 8 { ", …" } else { "" }
                ),
            )),
        }
    }

    /// Whether the file has tensor `name`.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.header.tensor(name).is_some()
    }

    /// The header entry of tensor `name`, checked to have ggml dims `expect`, recorded as used.
    fn checked(&mut self, name: &str, expect: &[usize]) -> Result<&'a TensorInfo> {
        let info = self.take(name)?;
        if info.dims != expect {
            return Err(Error::load(
                self.path,
                format!("tensor {name} has shape {:?}, expected {expect:?}", info.dims),
            ));
        }
        Ok(info)
    }

    /// Tensor `name`, which must have ggml dims `expect`, copied onto `device` as stored, for candle.
    fn qtensor(&mut self, name: &str, expect: &[usize], device: &Device) -> Result<QTensor> {
        let info = self.checked(name, expect)?;
        storage::check_unchanged(self.bytes)?;
        let dtype = info.dtype.to_candle().ok_or_else(|| {
            Error::load(self.path, format!("tensor {name}: {} is not supported on a GPU", info.dtype.name()))
        })?;
        let data = &self.bytes.as_slice()[info.offset..info.offset + info.size];
        let q =
            qtensor_from_ggml(dtype, data, info.shape(), device).map_err(|e| Error::load(self.path, e.to_string()))?;
        self.chunks.advance(info.size as u64)?;
        Ok(q)
    }

    /// Weight matrix `name` with ggml dims `expect` (`[cols, rows]`) on `device`: on the CPU our kernels, read in
    /// place from a mapping (or from the copy of `tryMmap: false`); on a GPU, copied for candle.
    pub(crate) fn linear(&mut self, name: &str, expect: &[usize], device: &Device) -> Result<Linear> {
        if device.is_cpu() {
            let info = self.checked(name, expect)?;
            storage::check_unchanged(self.bytes)?;
            let range = info.offset..info.offset + info.size;
            let w = match self.bytes {
                // In place: no copy, and the pages stay the page cache's (shared with other processes).
                // Read in now, in large reads, chunk by chunk with progress: from a cold page cache, faulting
                // them in page by page during the first token made the cold start slower (benches/results).
                FileBytes::Mapped(file) => {
                    for chunk in file.bytes()[range.clone()].chunks(POPULATE_CHUNK) {
                        storage::populate(chunk);
                        self.chunks.advance(chunk.len() as u64)?;
                    }
                    WeightMatrix::mapped(info.dtype, file.clone(), range, expect[1], expect[0])
                }
                FileBytes::Owned(bytes) => {
                    self.chunks.advance(info.size as u64)?;
                    WeightMatrix::new(info.dtype, &bytes[range], expect[1], expect[0])
                }
            };
            let w = w.ok_or_else(|| Error::load(self.path, format!("tensor {name}: size does not match its shape")))?;
            return Ok(Linear::Cpu(Arc::new(w)));
        }
        Ok(Linear::Candle(QMatMul::from_qtensor(self.qtensor(name, expect, device)?)?))
    }

    /// Vector `name` of `len` values, dequantized to f32 on `device`.
    pub(crate) fn vector(&mut self, name: &str, len: usize, device: &Device) -> Result<Tensor> {
        let info = self.checked(name, &[len])?;
        storage::check_unchanged(self.bytes)?;
        let data = &self.bytes.as_slice()[info.offset..info.offset + info.size];
        if info.dtype.row_bytes(len) != Some(data.len()) {
            return Err(Error::load(self.path, format!("tensor {name}: size does not match its shape")));
        }
        let mut values = vec![0f32; len];
        dequantize_row(info.dtype, data, &mut values);
        self.chunks.advance(info.size as u64)?;
        Ok(Tensor::from_vec(values, len, device)?)
    }

    /// `vector(name, len, device)` if the file has it.
    pub(crate) fn optional_vector(&mut self, name: &str, len: usize, device: &Device) -> Result<Option<Tensor>> {
        if !self.has(name) {
            return Ok(None);
        }
        self.vector(name, len, device).map(Some)
    }

    /// RoPE frequency factors `name` (`len` divisors, each finite and positive), if the file has them.
    pub(crate) fn rope_factors(&mut self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        let Some(t) = self.optional_vector(name, len, &Device::Cpu)? else {
            return Ok(None);
        };
        let values = t.to_vec1::<f32>()?;
        match values.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            Some(v) => Err(Error::load(self.path, format!("tensor {name} holds {v}, not a positive frequency factor"))),
            None => Ok(Some(values)),
        }
    }

    /// A second copy of tensor `name` as a candle matrix on `device` (a tied output head on a GPU), not counted
    /// as progress: the bytes were counted when the tensor was first loaded.
    pub(crate) fn tied_copy(&self, name: &str, device: &Device) -> Result<Linear> {
        let info = self.info(name)?;
        let dtype = info.dtype.to_candle().ok_or_else(|| {
            Error::load(self.path, format!("tensor {name}: {} is not supported on a GPU", info.dtype.name()))
        })?;
        let data = &self.bytes.as_slice()[info.offset..info.offset + info.size];
        Ok(Linear::Candle(QMatMul::from_qtensor(qtensor_from_ggml(dtype, data, info.shape(), device)?)?))
    }
}
