"""A model of safetensors-like files for the read-path benchmark, written without torch.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and `data_offsets` (relative to the end of the header), then the tensor bytes. The
files here are laid out as the `safetensors` library writes them (tensors sorted by dtype
alignment, then name; header padded with spaces to 8 bytes), with random bytes as weights.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MiB = 1 << 20
DTYPE_SIZE = {"F32": 4, "BF16": 2}
_POOL = os.urandom(16 * MiB)  # weights: slices of one random pool (cheap to write, no dedup)


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        size = DTYPE_SIZE[self.dtype]
        for dim in self.shape:
            size *= dim
        return size


def _write_random(out: Any, nbytes: int, seed: int) -> None:
    offset = (seed * 7919 * 4096) % len(_POOL)
    while nbytes > 0:
        chunk = _POOL[offset : offset + min(nbytes, len(_POOL) - offset)]
        out.write(chunk)
        nbytes -= len(chunk)
        offset = (offset + len(chunk) + 4096) % len(_POOL)


def write_safetensors(path: Path, tensors: list[Tensor], *, seed: int = 0) -> int:
    """Write `tensors` as a safetensors file; its size in bytes."""
    order = sorted(tensors, key=lambda t: (-DTYPE_SIZE[t.dtype], t.name))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in order:
        header[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for index, tensor in enumerate(order):
            _write_random(out, tensor.nbytes, seed * 1000 + index)
    return 8 + len(raw) + offset


def read_header(data: bytes | memoryview) -> tuple[int, dict[str, Any]]:
    """(offset of the tensor data, the header) of a safetensors file's first bytes."""
    (length,) = struct.unpack("<Q", bytes(data[:8]))
    header: dict[str, Any] = json.loads(bytes(data[8 : 8 + length]))
    return 8 + length, header


def _shard_tensors(shard: int, layers: range, hidden: int) -> list[Tensor]:
    """One shard's tensors: a transformer's layers (attention, MLP, norms)."""
    out: list[Tensor] = []
    if shard == 0:
        out.append(Tensor("model.embed_tokens.weight", "BF16", (8192, hidden)))
    for layer in layers:
        prefix = f"model.layers.{layer}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out.append(Tensor(f"{prefix}.self_attn.{name}.weight", "BF16", (hidden, hidden)))
        for name in ("gate_proj", "up_proj"):
            out.append(Tensor(f"{prefix}.mlp.{name}.weight", "BF16", (hidden * 2, hidden)))
        out.append(Tensor(f"{prefix}.mlp.down_proj.weight", "BF16", (hidden, hidden * 2)))
        for name in ("input_layernorm", "post_attention_layernorm"):
            out.append(Tensor(f"{prefix}.{name}.weight", "F32", (hidden,)))
    return out


def make_model(root: Path, *, total_bytes: int, shards: int = 4, small_files: int = 40) -> int:
    """Write a model of about `total_bytes` under `root`: `shards` large safetensors shards (95 %
    of the bytes) and `small_files` small ones (config, tokenizer, small tensors). Its size."""
    hidden = 1024
    layer_bytes = 2 * (4 * hidden * hidden + 3 * 2 * hidden * hidden)
    large = int(total_bytes * 0.95)
    layers = max(shards, (large - 8192 * hidden * 2) // layer_bytes)
    per_shard = -(-layers // shards)
    written = 0
    index_map: dict[str, str] = {}
    for shard in range(shards):
        name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        span = range(shard * per_shard, min(layers, (shard + 1) * per_shard))
        tensors = _shard_tensors(shard, span, hidden)
        written += write_safetensors(root / name, tensors, seed=shard)
        index_map.update({t.name: name for t in tensors})
    small = max(0, total_bytes - written)
    index = {"metadata": {"total_size": written}, "weight_map": index_map}
    texts = {
        "config.json": json.dumps({"architectures": ["Bench"], "hidden_size": hidden}),
        "generation_config.json": json.dumps({"do_sample": False}),
        "tokenizer_config.json": json.dumps({"model_max_length": 4096}),
        "special_tokens_map.json": json.dumps({"eos_token": "</s>"}),
        "model.safetensors.index.json": json.dumps(index, indent=1),
    }
    for name, text in texts.items():
        (root / name).write_text(text)
        written += len(text)
    # the rest: a tokenizer and small tensor files of 16 KiB to a few MiB (adapters, heads)
    count = max(1, small_files - len(texts))
    sizes = [16 * 1024 * (1 + (i * 37) % 97) for i in range(count)]
    scale = max(1.0, small / max(1, sum(sizes)))
    for i, size in enumerate(sizes):
        size = int(size * scale) // 4 * 4
        if i == 0:
            with (root / "tokenizer.json").open("wb") as out:
                _write_random(out, size, 99)
            written += size
            continue
        tensors = [Tensor(f"extra.{i}.weight", "F32", (size // 4,))]
        written += write_safetensors(root / f"extra/part-{i:03d}.safetensors", tensors, seed=i)
    return written


def model_files(root: Path) -> list[tuple[str, int]]:
    """(relative path, size) of every file under `root`, sorted by path."""
    return sorted(
        (p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*") if p.is_file()
    )
