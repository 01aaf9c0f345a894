//! The weight types the kernels run and the activation format llama.cpp pairs with each (its
//! `vec_dot_type`): a layer input is converted once per activation format and every matrix of that
//! format reads the same copy.

/// Elements per block of the 32-element formats (Q4_0 … Q8_0, IQ4_NL, and the Q8_0/Q8_1 activations).
pub const QK: usize = 32;
/// Elements per super-block of the K-quants (and the Q8_K activations).
pub const QK_K: usize = 256;

/// A tensor element type, as stored in a GGUF file (ids from ggml.h).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightType {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// bfloat16.
    BF16,
    /// f16 scale, 32 4-bit values offset by 8.
    Q4_0,
    /// f16 scale and minimum, 32 4-bit values.
    Q4_1,
    /// f16 scale, 32 5-bit values offset by 16.
    Q5_0,
    /// f16 scale and minimum, 32 5-bit values.
    Q5_1,
    /// f16 scale, 32 signed bytes.
    Q8_0,
    /// 256-value super-blocks of 2-bit values, 4-bit scales and minimums per 16.
    Q2_K,
    /// 256-value super-blocks of 3-bit values, 6-bit scales per 16.
    Q3_K,
    /// 256-value super-blocks of 4-bit values, 6-bit scales and minimums per 32.
    Q4_K,
    /// 256-value super-blocks of 5-bit values, 6-bit scales and minimums per 32.
    Q5_K,
    /// 256-value super-blocks of 6-bit values, 8-bit scales per 16.
    Q6_K,
    /// f16 scale, 32 4-bit indices into a fixed non-linear table (llama.cpp's quantizer uses it in Q2_K/Q3_K
    /// files for rows that are not a multiple of 256).
    IQ4_NL,
}

/// The activation format a weight type's dot product reads (llama.cpp's `vec_dot_type`).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActFormat {
    /// The activations as they are.
    F32,
    /// Rounded to f16.
    F16,
    /// Rounded to bfloat16.
    BF16,
    /// 32-blocks of bytes with an f16 scale.
    Q8_0,
    /// 32-blocks of bytes with an f16 scale and f16 scale × sum.
    Q8_1,
    /// 256-blocks of bytes with an f32 scale and sums per 16.
    Q8_K,
}

impl ActFormat {
    /// Every format, in the order `index` numbers them.
    pub const ALL: [ActFormat; 6] =
        [ActFormat::F32, ActFormat::F16, ActFormat::BF16, ActFormat::Q8_0, ActFormat::Q8_1, ActFormat::Q8_K];

    /// Position in `ALL`.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Elements per block (1 for the float formats).
    pub const fn block_elems(self) -> usize {
        match self {
            ActFormat::F32 | ActFormat::F16 | ActFormat::BF16 => 1,
            ActFormat::Q8_0 | ActFormat::Q8_1 => QK,
            ActFormat::Q8_K => QK_K,
        }
    }
}

impl WeightType {
    /// Every type.
    pub const ALL: [WeightType; 14] = [
        WeightType::F32,
        WeightType::F16,
        WeightType::BF16,
        WeightType::Q4_0,
        WeightType::Q4_1,
        WeightType::Q5_0,
        WeightType::Q5_1,
        WeightType::Q8_0,
        WeightType::Q2_K,
        WeightType::Q3_K,
        WeightType::Q4_K,
        WeightType::Q5_K,
        WeightType::Q6_K,
        WeightType::IQ4_NL,
    ];

    /// The type with ggml id `id`, if the kernels run it.
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => WeightType::F32,
            1 => WeightType::F16,
            2 => WeightType::Q4_0,
            3 => WeightType::Q4_1,
            6 => WeightType::Q5_0,
            7 => WeightType::Q5_1,
            8 => WeightType::Q8_0,
            10 => WeightType::Q2_K,
            11 => WeightType::Q3_K,
            12 => WeightType::Q4_K,
            13 => WeightType::Q5_K,
            14 => WeightType::Q6_K,
            20 => WeightType::IQ4_NL,
            30 => WeightType::BF16,
            _ => return None,
        })
    }

    /// The ggml id.
    pub const fn ggml_id(self) -> u32 {
        match self {
            WeightType::F32 => 0,
            WeightType::F16 => 1,
            WeightType::Q4_0 => 2,
            WeightType::Q4_1 => 3,
            WeightType::Q5_0 => 6,
            WeightType::Q5_1 => 7,
            WeightType::Q8_0 => 8,
            WeightType::Q2_K => 10,
            WeightType::Q3_K => 11,
            WeightType::Q4_K => 12,
            WeightType::Q5_K => 13,
            WeightType::Q6_K => 14,
            WeightType::IQ4_NL => 20,
            WeightType::BF16 => 30,
        }
    }

    /// llama.cpp's name for the type.
    pub const fn name(self) -> &'static str {
        match self {
            WeightType::F32 => "F32",
            WeightType::F16 => "F16",
            WeightType::BF16 => "BF16",
            WeightType::Q4_0 => "Q4_0",
            WeightType::Q4_1 => "Q4_1",
            WeightType::Q5_0 => "Q5_0",
            WeightType::Q5_1 => "Q5_1",
            WeightType::Q8_0 => "Q8_0",
            WeightType::Q2_K => "Q2_K",
            WeightType::Q3_K => "Q3_K",
            WeightType::Q4_K => "Q4_K",
            WeightType::Q5_K => "Q5_K",
            WeightType::Q6_K => "Q6_K",
            WeightType::IQ4_NL => "IQ4_NL",
        }
    }

    /// Elements per block.
    pub const fn block_elems(self) -> usize {
        match self {
            WeightType::F32 | WeightType::F16 | WeightType::BF16 => 1,
            WeightType::Q4_0
            | WeightType::Q4_1
            | WeightType::Q5_0
            | WeightType::Q5_1
            | WeightType::Q8_0
            | WeightType::IQ4_NL => QK,
            WeightType::Q2_K | WeightType::Q3_K | WeightType::Q4_K | WeightType::Q5_K | WeightType::Q6_K => QK_K,
        }
    }

    /// Bytes per block (ggml-common.h's layouts).
    pub const fn block_bytes(self) -> usize {
        match self {
            WeightType::F32 => 4,
            WeightType::F16 | WeightType::BF16 => 2,
            WeightType::Q4_0 | WeightType::IQ4_NL => 18,
            WeightType::Q4_1 => 20,
            WeightType::Q5_0 => 22,
            WeightType::Q5_1 => 24,
            WeightType::Q8_0 => 34,
            WeightType::Q2_K => 84,
            WeightType::Q3_K => 110,
            WeightType::Q4_K => 144,
            WeightType::Q5_K => 176,
            WeightType::Q6_K => 210,
        }
    }

    /// The activation format its dot product reads.
    pub const fn act_format(self) -> ActFormat {
        match self {
            WeightType::F32 => ActFormat::F32,
            WeightType::F16 => ActFormat::F16,
            WeightType::BF16 => ActFormat::BF16,
            WeightType::Q4_0 | WeightType::Q5_0 | WeightType::Q8_0 | WeightType::IQ4_NL => ActFormat::Q8_0,
            WeightType::Q4_1 | WeightType::Q5_1 => ActFormat::Q8_1,
            WeightType::Q2_K | WeightType::Q3_K | WeightType::Q4_K | WeightType::Q5_K | WeightType::Q6_K => {
                ActFormat::Q8_K
            }
        }
    }

    /// candle's name for the type (its CUDA kernels run the model on a GPU); `None` for IQ4_NL, which candle
    /// does not have.
    pub fn to_candle(self) -> Option<candle_core::quantized::GgmlDType> {
        use candle_core::quantized::GgmlDType as G;
        Some(match self {
            WeightType::F32 => G::F32,
            WeightType::F16 => G::F16,
            WeightType::BF16 => G::BF16,
            WeightType::Q4_0 => G::Q4_0,
            WeightType::Q4_1 => G::Q4_1,
            WeightType::Q5_0 => G::Q5_0,
            WeightType::Q5_1 => G::Q5_1,
            WeightType::Q8_0 => G::Q8_0,
            WeightType::Q2_K => G::Q2K,
            WeightType::Q3_K => G::Q3K,
            WeightType::Q4_K => G::Q4K,
            WeightType::Q5_K => G::Q5K,
            WeightType::Q6_K => G::Q6K,
            WeightType::IQ4_NL => return None,
        })
    }

    /// Bytes of one row of `cols` elements; `None` if `cols` is not a whole number of blocks (or overflows).
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        if cols == 0 || !cols.is_multiple_of(self.block_elems()) {
            return None;
        }
        (cols / self.block_elems()).checked_mul(self.block_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_rows_are_whole_blocks() {
        for t in WeightType::ALL {
            assert_eq!(WeightType::from_ggml_id(t.ggml_id()), Some(t));
            assert_eq!(t.act_format().block_elems(), t.block_elems(), "{t:?}: one activation block per weight block");
        }
        assert_eq!(WeightType::from_ggml_id(9), None, "Q8_1 is an activation format only");
        assert_eq!(WeightType::Q4_K.row_bytes(960), None);
        assert_eq!(WeightType::Q4_K.row_bytes(2048), Some(8 * 144));
        assert_eq!(WeightType::Q5_0.row_bytes(960), Some(30 * 22));
        assert_eq!(WeightType::F16.row_bytes(3), Some(6));
        assert_eq!(WeightType::Q8_0.row_bytes(usize::MAX - 31), None);
    }
}
