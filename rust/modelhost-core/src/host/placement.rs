//! Where each part of a model runs: a per-layer plan from the GPU config and the devices present.

use candle_core::Device;

use crate::error::{Error, Result};

/// How GPU layers are spread over several GPUs (LM Studio's `gpu.splitStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitStrategy {
    /// The same number of blocks on each enabled GPU.
    Evenly,
    /// Everything on the main GPU.
    FavorMainGpu,
}

impl SplitStrategy {
    /// LM Studio's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SplitStrategy::Evenly => "evenly",
            SplitStrategy::FavorMainGpu => "favorMainGpu",
        }
    }

    /// Parse LM Studio's spelling.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "evenly" => Ok(SplitStrategy::Evenly),
            "favorMainGpu" => Ok(SplitStrategy::FavorMainGpu),
            other => Err(Error::InvalidConfig(format!(
                "gpu.splitStrategy {other:?} is not one of \"evenly\", \"favorMainGpu\""
            ))),
        }
    }
}

/// The GPU part of a load config.
#[derive(Debug, Clone)]
pub struct GpuConfig {
    /// Fraction of the blocks to put on GPUs, 0..=1; `None` = all on the GPU if one is usable, else CPU.
    pub ratio: Option<f64>,
    /// With `FavorMainGpu`, the GPU that takes every offloaded block (must be usable); unused with `Evenly`.
    pub main_gpu: usize,
    /// How to split over several GPUs.
    pub split_strategy: SplitStrategy,
    /// GPU indices not to use.
    pub disabled_gpus: Vec<usize>,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig { ratio: None, main_gpu: 0, split_strategy: SplitStrategy::Evenly, disabled_gpus: Vec::new() }
    }
}

/// The devices each part of the model runs on.
#[derive(Debug, Clone)]
pub struct Placement {
    blocks: Vec<Device>,
    output: Device,
    /// Human-readable plan: (part, device) for embeddings, each block and the output head.
    pub layers: Vec<(String, String)>,
    /// The GPU ratio actually used.
    pub applied_ratio: f64,
    /// Set when the GPU request could not be honoured (SPEC §5: load on the CPU and say why).
    pub warning: Option<String>,
}

fn device_name(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The CUDA devices this build can use, by index.
fn cuda_devices() -> Vec<(usize, Device)> {
    if !candle_core::utils::cuda_is_available() {
        return Vec::new();
    }
    // Ask for devices until one is missing; no machine has more than a handful.
    (0..16).map_while(|i| Device::new_cuda(i).ok().map(|d| (i, d))).collect()
}

impl Placement {
    /// Everything on the CPU.
    pub fn cpu(n_blocks: usize) -> Self {
        Self::build(vec![Device::Cpu; n_blocks], Device::Cpu, 0.0, None)
    }

    fn build(blocks: Vec<Device>, output: Device, applied_ratio: f64, warning: Option<String>) -> Self {
        let mut layers = vec![("embeddings".to_string(), "cpu".to_string())];
        layers.extend(blocks.iter().enumerate().map(|(i, d)| (format!("block.{i}"), device_name(d))));
        layers.push(("output".to_string(), device_name(&output)));
        Placement { blocks, output, layers, applied_ratio, warning }
    }

    /// Plan `n_blocks` blocks as llama.cpp offloads layers: the last `round(ratio × n)` blocks go to
    /// the GPUs, and the output head too when every block does.
    pub fn plan(n_blocks: usize, gpu: &GpuConfig) -> Result<Self> {
        if let Some(r) = gpu.ratio.filter(|r| !(0.0..=1.0).contains(r)) {
            return Err(Error::InvalidConfig(format!("gpu.ratio {r} is outside 0..1")));
        }
        if gpu.ratio == Some(0.0) {
            return Ok(Self::cpu(n_blocks));
        }
        let devices: Vec<(usize, Device)> =
            cuda_devices().into_iter().filter(|(i, _)| !gpu.disabled_gpus.contains(i)).collect();
        // SPEC §5: by default everything goes on the first GPU when one is usable, else the CPU, silently.
        let Some(ratio) = gpu.ratio.or(if devices.is_empty() { None } else { Some(1.0) }) else {
            return Ok(Self::cpu(n_blocks));
        };
        if devices.is_empty() {
            let why = if candle_core::utils::cuda_is_available() {
                "no usable CUDA device is present"
            } else {
                "this modelhost build has no CUDA support"
            };
            let mut p = Self::cpu(n_blocks);
            p.warning = Some(format!("gpu.ratio {ratio} asked for GPU offload, but {why}: loaded on the CPU"));
            return Ok(p);
        }
        let usable: Vec<usize> = devices.iter().map(|(i, _)| *i).collect();
        let (blocks, output) = assign_gpus(n_blocks, ratio, gpu, &usable)?;
        let device = |gpu: Option<usize>| match gpu {
            Some(i) => devices.iter().find(|(j, _)| *j == i).map_or(Device::Cpu, |(_, d)| d.clone()),
            None => Device::Cpu,
        };
        let n_gpu = blocks.iter().filter(|b| b.is_some()).count();
        let blocks = blocks.into_iter().map(device).collect();
        Ok(Self::build(blocks, device(output), n_gpu as f64 / n_blocks.max(1) as f64, None))
    }

    /// The device of block `i`.
    pub fn block_device(&self, i: usize) -> Result<Device> {
        self.blocks.get(i).cloned().ok_or_else(|| Error::InvalidConfig(format!("no placement for block {i}")))
    }

    /// The device of the output head.
    pub fn output_device(&self) -> Result<Device> {
        Ok(self.output.clone())
    }

    /// The main device, for display ("cpu", "cuda:0").
    pub fn main_device(&self) -> String {
        self.blocks.last().map_or_else(|| "cpu".into(), device_name)
    }

    /// Bytes per device for a total split evenly over the blocks (an estimate for `estimate()`).
    pub fn split_bytes(&self, per_block: u64, other_cpu: u64) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = vec![("cpu".into(), other_cpu)];
        for d in &self.blocks {
            let name = device_name(d);
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, b)) => *b += per_block,
                None => out.push((name, per_block)),
            }
        }
        out
    }
}

/// The GPU of each block and of the output head (`None`: the CPU), from the indices of the usable GPUs, as llama.cpp
/// offloads layers: the last `round(ratio × n)` blocks go to GPUs, and the output head too when every block does.
/// `favorMainGpu` puts them all on `gpu.main_gpu`, which must be usable; `evenly` splits them over every usable GPU in
/// index order (`main_gpu` is not used). Indices only, so it is checked without a GPU.
fn assign_gpus(
    n_blocks: usize,
    ratio: f64,
    gpu: &GpuConfig,
    usable: &[usize],
) -> Result<(Vec<Option<usize>>, Option<usize>)> {
    let used: Vec<usize> = match gpu.split_strategy {
        SplitStrategy::FavorMainGpu if usable.contains(&gpu.main_gpu) => vec![gpu.main_gpu],
        SplitStrategy::FavorMainGpu => {
            return Err(Error::InvalidConfig(format!(
                "gpu.mainGpu {} is not a usable GPU (usable: {usable:?}, disabled: {:?})",
                gpu.main_gpu, gpu.disabled_gpus
            )))
        }
        SplitStrategy::Evenly => usable.to_vec(),
    };
    let n_gpu = ((ratio * n_blocks as f64).round() as usize).min(n_blocks);
    let first_gpu = n_blocks - n_gpu;
    let per_device = n_gpu.div_ceil(used.len()).max(1);
    let blocks = (0..n_blocks).map(|i| (i >= first_gpu).then(|| used[(i - first_gpu) / per_device])).collect();
    let output = (n_gpu == n_blocks).then(|| used[used.len() - 1]);
    Ok((blocks, output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_only_build_falls_back_with_a_warning() {
        let p = Placement::plan(4, &GpuConfig { ratio: Some(0.5), ..Default::default() }).unwrap();
        if !candle_core::utils::cuda_is_available() {
            assert!(p.warning.as_deref().unwrap().contains("no CUDA support"));
            assert_eq!(p.applied_ratio, 0.0);
            assert!(p.layers.iter().all(|(_, d)| d == "cpu"));
            assert_eq!(p.layers.len(), 6);
        }
        let off = Placement::plan(4, &GpuConfig { ratio: Some(0.0), ..Default::default() }).unwrap();
        assert!(off.warning.is_none());
        let auto = Placement::plan(4, &GpuConfig::default()).unwrap();
        assert!(auto.warning.is_none());
        assert!(Placement::plan(4, &GpuConfig { ratio: Some(1.5), ..Default::default() }).is_err());
    }
}

#[cfg(test)]
mod gpu_assignment_tests {
    use super::*;

    fn config(split_strategy: SplitStrategy, main_gpu: usize) -> GpuConfig {
        GpuConfig { ratio: Some(1.0), main_gpu, split_strategy, disabled_gpus: Vec::new() }
    }

    #[test]
    fn favor_main_gpu_puts_every_offloaded_block_and_the_head_on_the_main_gpu() {
        let (blocks, output) = assign_gpus(4, 1.0, &config(SplitStrategy::FavorMainGpu, 2), &[0, 2, 3]).unwrap();
        assert_eq!((blocks, output), (vec![Some(2); 4], Some(2)));
        // Half the blocks: the last two, and the head stays on the CPU.
        let (blocks, output) = assign_gpus(4, 0.5, &config(SplitStrategy::FavorMainGpu, 3), &[0, 3]).unwrap();
        assert_eq!((blocks, output), (vec![None, None, Some(3), Some(3)], None));
    }

    #[test]
    fn evenly_splits_over_the_usable_gpus_in_order_whatever_the_main_gpu() {
        for main_gpu in [0, 1, 7] {
            let (blocks, output) = assign_gpus(4, 1.0, &config(SplitStrategy::Evenly, main_gpu), &[1, 3]).unwrap();
            assert_eq!((blocks, output), (vec![Some(1), Some(1), Some(3), Some(3)], Some(3)));
        }
    }

    /// A main GPU that is absent or disabled is an error naming it, not silently the first GPU.
    #[test]
    fn favor_main_gpu_refuses_a_main_gpu_that_is_not_usable() {
        for usable in [&[0, 1][..], &[1][..]] {
            let err = assign_gpus(4, 1.0, &config(SplitStrategy::FavorMainGpu, 5), usable).unwrap_err();
            assert!(matches!(&err, Error::InvalidConfig(m) if m.contains("gpu.mainGpu 5")), "{err}");
        }
    }
}
