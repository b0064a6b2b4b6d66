"""A draft checkpoint's tensors as zero-copy views of the files, for the live reload.

Every vLLM worker (one per TP rank) loads the draft itself: ``collective_rpc`` runs the reload in
each worker process, and each worker's ``load_weights`` cuts its own shard out of the full tensors.
Reading the files with ``safetensors.torch.load_file`` made every rank copy the whole checkpoint
into its own process memory at every reload (8 ranks x a 0.8-1.6 GB EAGLE-3 head at 7B). Here each
rank maps the files instead (``mmap``, private copy-on-write): the tensors are views of the page
cache, which the kernel shares between all processes of a node, so a published version is read
from storage once per node, each rank touches only the pages its loaders copy out, and no rank
holds a private copy. Versions are immutable once published (``learner/publisher.py`` renames a
finished directory into place), so the page cache needs no invalidation, and a version pruned while
mapped stays readable until the mapping is dropped (POSIX unlink semantics).

Passing the tensors from the server through ``collective_rpc`` instead would not read less: vLLM's
multiprocess executor serialises the arguments (msgpack) from the server to the engine-core process
and broadcasts them to every worker through its shared-memory queue, so a 1 GB head would be copied
into the engine core and once per worker at every reload.

The non-finite check reads each floating tensor in chunks (a bounded temporary, not one the size
of the tensor).
"""

from __future__ import annotations

import mmap
import os
import struct

import torch

from verl_specrollout.draft.format import find_weight_files, safetensors_header

# safetensors dtype strings -> torch dtypes (those torch has).
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"),
                     ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):
        _DTYPES[_name] = getattr(torch, _attr)

FINITE_CHECK_CHUNK = 1 << 22  # elements per isfinite() call: a 4 MB bool temporary


def map_safetensors(path: str) -> dict:
    """{name: tensor} of one safetensors file, each a view of a private mapping of the file."""
    header = safetensors_header(path)  # validated: its length fits in the file
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    start = 8 + n
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(meta.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has dtype {meta.get('dtype')!r}, which torch cannot map")
        shape = [int(s) for s in meta["shape"]]
        begin, end = (int(x) for x in meta["data_offsets"])
        numel = 1
        for s in shape:
            numel *= s
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - begin != numel * itemsize or start + end > size:
            raise ValueError(f"{path}: tensor {name} ({shape}, {meta.get('dtype')}) runs past the end of the file "
                             f"or does not match its byte range [{begin}, {end})")
        if numel == 0:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        out[name] = torch.frombuffer(mm, dtype=dtype, count=numel, offset=start + begin).view(shape)
    return out


def map_checkpoint(ckpt_dir: str) -> dict:
    """Every tensor of a draft checkpoint (safetensors or a torch .bin, one file or sharded), mapped
    from the files without copying them (a .bin through ``torch.load(mmap=True)``)."""
    files = find_weight_files(ckpt_dir)
    if not files:
        raise FileNotFoundError(f"no model.safetensors / pytorch_model.bin (or index) in {ckpt_dir}")
    sd: dict = {}
    for name in files:
        path = os.path.join(ckpt_dir, name)
        if name.endswith(".safetensors"):
            sd.update(map_safetensors(path))
        else:
            sd.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    return sd


def check_finite(sd: dict, chunk: int = FINITE_CHECK_CHUNK) -> None:
    """Raise ValueError naming the first floating tensor with a NaN or an infinity."""
    for name, t in sd.items():
        if not t.is_floating_point() or t.numel() == 0:
            continue
        flat = t.reshape(-1)  # a view: mapped tensors are contiguous
        for s in range(0, flat.numel(), chunk):
            if not bool(torch.isfinite(flat[s:s + chunk]).all()):
                raise ValueError(f"non-finite values in {name}")
