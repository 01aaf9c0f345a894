"""A small pure-Python GGUF (v2/v3) writer and reader, for writing valid and hostile files in tests.

The writer takes every count and length from its arguments unless told otherwise, so a test can make a header lie
(``tensor_count=2**60``) while the rest of the file stays well formed.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# Metadata value types (gguf.h).
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALAR_FORMATS = {
    UINT8: "<B",
    INT8: "<b",
    UINT16: "<H",
    INT16: "<h",
    UINT32: "<I",
    INT32: "<i",
    FLOAT32: "<f",
    BOOL: "<?",
    UINT64: "<Q",
    INT64: "<q",
    FLOAT64: "<d",
}

# Tensor types (ggml.h) and their (block size, bytes per block).
F32, F16, Q4_0, Q4_1 = 0, 1, 2, 3
Q8_0 = 8
BF16 = 30
TYPE_SIZES = {F32: (1, 4), F16: (1, 2), Q4_0: (32, 18), Q4_1: (32, 20), Q8_0: (32, 34), BF16: (1, 2)}


@dataclass
class KV:
    """One metadata entry. For arrays, ``value`` is a list and ``item_type`` the element type."""

    key: str | bytes
    type: int
    value: Any
    item_type: int = STRING
    count: int | None = None  # to make the header lie about an array's (or a string value's) length


@dataclass
class TensorInfo:
    """One tensor's header entry; ``offset`` is relative to the data section (None: place it after the last)."""

    name: str | bytes
    dims: Sequence[int]
    type: int = F32
    offset: int | None = None
    n_dims: int | None = None  # to make the header lie about the number of dims


def tensor_nbytes(dims: Sequence[int], ggml_type: int) -> int:
    """Bytes of a tensor's data."""
    block, size = TYPE_SIZES[ggml_type]
    numel = 1
    for d in dims:
        numel *= d
    return numel // block * size


def _string(value: str | bytes, length: int | None = None) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def _value(vtype: int, value: Any, item_type: int = STRING, count: int | None = None) -> bytes:
    if vtype == STRING:
        return _string(value, count)
    if vtype == ARRAY:
        out = struct.pack("<IQ", item_type, len(value) if count is None else count)
        return out + b"".join(_value(item_type, v) for v in value)
    if vtype not in _SCALAR_FORMATS:
        return struct.pack("<I", value)  # an unknown type: four bytes of something
    return struct.pack(_SCALAR_FORMATS[vtype], value)


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


@dataclass
class GGUFFile:
    """A GGUF file's content: header entries and the data section."""

    kvs: list[KV] = field(default_factory=list)
    tensors: list[TensorInfo] = field(default_factory=list)
    data: bytes | None = None  # None: zeros, as long as the tensors need
    version: int = 3
    magic: bytes = GGUF_MAGIC
    tensor_count: int | None = None  # override the counts written in the header
    kv_count: int | None = None
    alignment: int = DEFAULT_ALIGNMENT

    def header_bytes(self) -> bytes:
        """Everything up to the start of the data section (padding included)."""
        out = bytearray(self.magic)
        out += struct.pack("<I", self.version)
        out += struct.pack(
            "<QQ",
            len(self.tensors) if self.tensor_count is None else self.tensor_count,
            len(self.kvs) if self.kv_count is None else self.kv_count,
        )
        for kv in self.kvs:
            out += _string(kv.key) + struct.pack("<I", kv.type) + _value(kv.type, kv.value, kv.item_type, kv.count)
        next_offset = 0
        for t in self.tensors:
            offset = next_offset if t.offset is None else t.offset
            out += _string(t.name)
            out += struct.pack("<I", len(t.dims) if t.n_dims is None else t.n_dims)
            out += b"".join(struct.pack("<Q", d) for d in t.dims)
            out += struct.pack("<IQ", t.type, offset)
            if t.type in TYPE_SIZES:
                next_offset = _align(offset + tensor_nbytes(t.dims, t.type), self.alignment) % 2**64
        out += b"\0" * (_align(len(out), self.alignment) - len(out))
        return bytes(out)

    def data_size(self) -> int:
        """Bytes the tensors need in the data section."""
        end = 0
        next_offset = 0
        for t in self.tensors:
            offset = next_offset if t.offset is None else t.offset
            if t.type in TYPE_SIZES:
                end = max(end, offset + tensor_nbytes(t.dims, t.type))
                next_offset = _align(offset + tensor_nbytes(t.dims, t.type), self.alignment)
        return end

    def to_bytes(self, max_data: int = 64 << 20) -> bytes:
        """The whole file; zeros for the data unless given, at most ``max_data`` of them (a lying header may ask
        for more than exists)."""
        data = self.data if self.data is not None else b"\0" * min(self.data_size(), max_data)
        return self.header_bytes() + data

    def write(self, path: str | Path) -> Path:
        """Write the file; returns its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_bytes())
        return path


def tiny_gguf(n_tensors: int = 3, *, extra_kvs: Sequence[KV] = ()) -> GGUFFile:
    """A small, valid GGUF with a few metadata entries and F32/F16 tensors (not a runnable model)."""
    kvs = [
        KV("general.architecture", STRING, "llama"),
        KV("general.name", STRING, "tiny test model"),
        KV("general.alignment", UINT32, DEFAULT_ALIGNMENT),
        KV("llama.context_length", UINT32, 128),
        KV("tokenizer.ggml.tokens", ARRAY, ["<unk>", "a", "b", "c"], STRING),
        KV("tokenizer.ggml.scores", ARRAY, [0.0, -1.0, -2.0, -3.0], FLOAT32),
        *extra_kvs,
    ]
    tensors = [TensorInfo(f"blk.{i}.weight", [8, 4], F32 if i % 2 == 0 else F16) for i in range(n_tensors)]
    return GGUFFile(kvs=kvs, tensors=tensors)


class _Reader:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def read(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        raw = self.f.read(size)
        if len(raw) != size:
            raise EOFError("truncated GGUF")
        return struct.unpack(fmt, raw)[0]

    def string(self) -> bytes:
        n = self.read("<Q")
        if n > 1 << 30:
            raise ValueError(f"string length {n} too large")
        raw = self.f.read(n)
        if len(raw) != n:
            raise EOFError("truncated GGUF")
        return raw

    def value(self, vtype: int) -> tuple[Any, int]:
        if vtype == STRING:
            return self.string(), STRING
        if vtype == ARRAY:
            item_type = self.read("<I")
            n = self.read("<Q")
            return [self.value(item_type)[0] for _ in range(n)], item_type
        return self.read(_SCALAR_FORMATS[vtype]), STRING


def read_gguf_header(path: str | Path) -> tuple[GGUFFile, int]:
    """Read a GGUF file's header (not its data).

    Returns:
        The file description (``data`` left None) and the offset of the data section in the file.
    """
    with open(path, "rb") as f:
        r = _Reader(f)
        magic = f.read(4)
        version = r.read("<I")
        n_tensors = r.read("<Q")
        n_kvs = r.read("<Q")
        kvs: list[KV] = []
        alignment = DEFAULT_ALIGNMENT
        for _ in range(n_kvs):
            key = r.string()
            vtype = r.read("<I")
            value, item_type = r.value(vtype)
            kvs.append(KV(key, vtype, value, item_type))
            if key == b"general.alignment":
                alignment = int(value)
        tensors: list[TensorInfo] = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.read("<I")
            dims = [r.read("<Q") for _ in range(n_dims)]
            ggml_type = r.read("<I")
            offset = r.read("<Q")
            tensors.append(TensorInfo(name, dims, ggml_type, offset))
        data_start = _align(f.tell(), alignment)
    return GGUFFile(kvs=kvs, tensors=tensors, version=version, magic=magic, alignment=alignment), data_start
