//! Which instruction set runs the kernels (decided once per process, at run time, so the wheel keeps its
//! x86-64-v3 baseline), and the row kernel of each weight type on it.

use std::sync::OnceLock;

use super::act::ActRow;
use super::scalar;
use super::types::WeightType;

/// An instruction-set level of the kernels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust (the reference).
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 with AVX-VNNI's `vpdpbusd` / `vpdpwssd` (VEX encoded).
    AvxVnni,
    /// AVX-512 F/BW/VL/VNNI: the row kernels use its 256-bit VNNI forms, prompt processing its blocked GEMM.
    Avx512,
}

impl Isa {
    /// Every level this CPU can run, lowest first.
    pub fn available() -> Vec<Isa> {
        static AVAILABLE: OnceLock<Vec<Isa>> = OnceLock::new();
        AVAILABLE.get_or_init(Self::detect).clone()
    }

    fn detect() -> Vec<Isa> {
        let mut out = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            let f = |name: &str| match name {
                "avx2" => is_x86_feature_detected!("avx2"),
                "fma" => is_x86_feature_detected!("fma"),
                "f16c" => is_x86_feature_detected!("f16c"),
                "avxvnni" => is_x86_feature_detected!("avxvnni"),
                "avx512f" => is_x86_feature_detected!("avx512f"),
                "avx512bw" => is_x86_feature_detected!("avx512bw"),
                "avx512vl" => is_x86_feature_detected!("avx512vl"),
                "avx512vnni" => is_x86_feature_detected!("avx512vnni"),
                _ => false,
            };
            if f("avx2") && f("fma") && f("f16c") {
                out.push(Isa::Avx2);
                if f("avxvnni") {
                    out.push(Isa::AvxVnni);
                }
                if f("avx512f") && f("avx512bw") && f("avx512vl") && f("avx512vnni") {
                    out.push(Isa::Avx512);
                }
            }
        }
        out
    }

    /// The level the kernels use: the highest available, or the one `MODELHOST_KERNELS`
    /// (`scalar`, `avx2`, `avxvnni`, `avx512`) names if the CPU has it (for comparisons).
    pub fn get() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let available = Isa::available();
            let wanted = std::env::var("MODELHOST_KERNELS").ok().and_then(|v| match v.as_str() {
                "scalar" => Some(Isa::Scalar),
                "avx2" => Some(Isa::Avx2),
                "avxvnni" => Some(Isa::AvxVnni),
                "avx512" => Some(Isa::Avx512),
                _ => None,
            });
            match wanted {
                Some(isa) if available.contains(&isa) => isa,
                _ => *available.last().unwrap_or(&Isa::Scalar),
            }
        })
    }

    /// A short name, for logs and benchmark records.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avx-vnni",
            Isa::Avx512 => "avx512-vnni",
        }
    }
}

/// A quantized row kernel: one weight row against 1-4 activation rows.
pub type QuantRowFn = unsafe fn(&[u8], &[ActRow<'_>], &mut [f32]);
/// A float row kernel: one weight row against 1-4 activation rows of floats.
pub type FloatRowFn = unsafe fn(&[u8], &[&[f32]], &mut [f32]);

/// The row kernel of one weight type on one instruction set.
#[derive(Clone, Copy)]
pub enum RowKernel {
    /// The portable reference.
    Scalar(WeightType),
    /// A SIMD kernel of a quantized type.
    Quant(QuantRowFn),
    /// A SIMD kernel of a float type.
    Float(FloatRowFn),
}

impl std::fmt::Debug for RowKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowKernel::Scalar(t) => write!(f, "Scalar({t:?})"),
            RowKernel::Quant(_) => f.write_str("Quant"),
            RowKernel::Float(_) => f.write_str("Float"),
        }
    }
}

impl RowKernel {
    /// The kernel for `ty` at `isa` (which the caller has checked the CPU has).
    pub fn new(ty: WeightType, isa: Isa) -> RowKernel {
        #[cfg(target_arch = "x86_64")]
        {
            use super::{avx2_float as fl, avx2_kquant as kq, avx2_q32 as q};
            use WeightType as T;
            // With AVX-512 the row kernels are 256 bits wide either way; where the CPU also has AVX-VNNI its
            // VEX-encoded kernels measured as fast or faster (the K-quants' by up to a sixth).
            let vex = isa == Isa::Avx512 && Isa::available().contains(&Isa::AvxVnni);
            let pick = |avx2: QuantRowFn, vnni: QuantRowFn, avx512: QuantRowFn| match isa {
                Isa::Scalar => RowKernel::Scalar(ty),
                Isa::Avx2 => RowKernel::Quant(avx2),
                Isa::AvxVnni => RowKernel::Quant(vnni),
                Isa::Avx512 if vex => RowKernel::Quant(vnni),
                Isa::Avx512 => RowKernel::Quant(avx512),
            };
            let float = |f: FloatRowFn| if isa == Isa::Scalar { RowKernel::Scalar(ty) } else { RowKernel::Float(f) };
            match ty {
                T::Q4_0 => pick(q::q4_0_avx2, q::q4_0_avxvnni, q::q4_0_avx512),
                T::Q4_1 => pick(q::q4_1_avx2, q::q4_1_avxvnni, q::q4_1_avx512),
                T::Q5_0 => pick(q::q5_0_avx2, q::q5_0_avxvnni, q::q5_0_avx512),
                T::Q5_1 => pick(q::q5_1_avx2, q::q5_1_avxvnni, q::q5_1_avx512),
                T::Q8_0 => pick(q::q8_0_avx2, q::q8_0_avxvnni, q::q8_0_avx512),
                T::IQ4_NL => pick(q::iq4_nl_avx2, q::iq4_nl_avxvnni, q::iq4_nl_avx512),
                T::Q2_K => pick(kq::q2_k_avx2, kq::q2_k_avxvnni, kq::q2_k_avx512),
                T::Q3_K => pick(kq::q3_k_avx2, kq::q3_k_avxvnni, kq::q3_k_avx512),
                T::Q4_K => pick(kq::q4_k_avx2, kq::q4_k_avxvnni, kq::q4_k_avx512),
                T::Q5_K => pick(kq::q5_k_avx2, kq::q5_k_avxvnni, kq::q5_k_avx512),
                T::Q6_K => pick(kq::q6_k_avx2, kq::q6_k_avxvnni, kq::q6_k_avx512),
                T::F32 => float(fl::f32_avx2),
                T::F16 => float(fl::f16_avx2),
                T::BF16 => float(fl::bf16_avx2),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = isa;
            RowKernel::Scalar(ty)
        }
    }

    /// Dot products of one weight row with 1-4 quantized activation rows.
    #[inline]
    pub fn quant(self, w: &[u8], a: &[ActRow<'_>], out: &mut [f32]) {
        debug_assert!((1..=4).contains(&a.len()) && out.len() == a.len());
        match self {
            RowKernel::Scalar(ty) => {
                for (o, a) in out.iter_mut().zip(a) {
                    *o = scalar::dot_quant(ty, w, *a);
                }
            }
            // SAFETY: `new` only hands out kernels of the instruction sets `Isa::available` found, and the
            // callers pass rows of matching sizes (checked when the matrix was built).
            RowKernel::Quant(f) => unsafe { f(w, a, out) },
            RowKernel::Float(_) => unreachable!("float kernel given quantized activations"),
        }
    }

    /// Dot products of one weight row with 1-4 float activation rows.
    #[inline]
    pub fn float(self, w: &[u8], a: &[&[f32]], out: &mut [f32]) {
        debug_assert!((1..=4).contains(&a.len()) && out.len() == a.len());
        match self {
            RowKernel::Scalar(ty) => {
                for (o, a) in out.iter_mut().zip(a) {
                    *o = scalar::dot_float(ty, w, a);
                }
            }
            // SAFETY: as in `quant`.
            RowKernel::Float(f) => unsafe { f(w, a, out) },
            RowKernel::Quant(_) => unreachable!("quantized kernel given float activations"),
        }
    }
}
