"""A second real GGUF LLM for the multi-model tests: SmolLM2 re-quantized from Q4_1 to Q8_0 with the ``gguf`` package.

Every quantized tensor is dequantized and quantized again as Q8_0; F32 tensors and the metadata are copied (the name
and file type say what it is). The file is a different model to modelhost (another quantization, another size, other
logits), made from the sample model alone, so no model hub is needed. It is cached under
``~/.cache/modelhost/fixtures/`` keyed by the source file's size and this maker's version, and written atomically.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

MAKER_VERSION = 1
REQUANT_KEY = "modelhost-test/SmolLM2-135M-Instruct-Q8_0-GGUF"
REQUANT_FILE = "SmolLM2-135M-Instruct.Q8_0.gguf"
_MOSTLY_Q8_0 = 7  # llama.cpp's general.file_type for "mostly Q8_0"


def fixtures_dir() -> Path:
    """Where generated test models live (never the models dir): ``$MODELHOST_FIXTURES_DIR`` or
    ``~/.cache/modelhost/fixtures``."""
    env = os.environ.get("MODELHOST_FIXTURES_DIR")
    return Path(env) if env else Path.home() / ".cache" / "modelhost" / "fixtures"


def requantize_q8_0(source: Path, dest: Path) -> None:
    """Write ``source`` (a GGUF) to ``dest`` with every quantized tensor re-quantized as Q8_0."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize, quantize

    reader = gguf.GGUFReader(source)
    arch = str(reader.fields["general.architecture"].contents())
    partial = dest.with_suffix(f".{os.getpid()}.partial")
    writer = gguf.GGUFWriter(partial, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type", "general.name"):
            continue
        sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
    writer.add_name("SmolLM2 135M Instruct (re-quantized Q8_0, modelhost test fixture)")
    writer.add_file_type(_MOSTLY_Q8_0)
    for tensor in reader.tensors:
        if tensor.tensor_type in (Q.F32, Q.F16, Q.BF16):
            writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
            continue
        weights = dequantize(np.asarray(tensor.data), tensor.tensor_type)
        writer.add_tensor(tensor.name, quantize(weights, Q.Q8_0), raw_dtype=Q.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(dest)


def requantized_smollm2(source: Path) -> Path:
    """The cached Q8_0 re-quantization of the SmolLM2 file ``source``, made on first use."""
    dest = fixtures_dir() / "requantized" / f"v{MAKER_VERSION}-{source.stat().st_size}" / REQUANT_FILE
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        requantize_q8_0(source, dest)
    return dest


def link_or_copy(source: Path, dest: Path) -> None:
    """``dest`` as a hard link to ``source`` (a copy across file systems); a folder is linked file by file."""
    if source.is_dir():
        for item in source.rglob("*"):
            if item.is_file():
                link_or_copy(item, dest / item.relative_to(source))
        return
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)
