"""safetensors files read tensor by tensor (memory-mapped) and written from numpy, with errors that name
the tensor and the file.

Format: an 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets:
[begin, end]}, "__metadata__": {...}}, then the raw little-endian tensor bytes (offsets relative to the
end of the header). A directory holds one `model.safetensors` or several shards listed in
`model.safetensors.index.json` ({"weight_map": {name: shard file}}).

Reading hands out one tensor at a time, each read into its own buffer (not a memory map, whose
resident pages would count against the process until the file is closed), so peak host memory stays
near the largest tensor (plus the one copy a transpose makes), whatever the checkpoint's size.
bfloat16 comes through `ml_dtypes`, which numpy lacks.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator

import ml_dtypes
import numpy as np

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(ValueError):
  """A checkpoint file is missing, corrupt, truncated, or does not match the model."""


class SafetensorsFile:
  """One .safetensors file: `keys()`, `shape(name)`, `get(name)` -> np.ndarray (a fresh buffer)."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
      (n,) = struct.unpack("<Q", head)
      if n > size - 8 or n > 100_000_000:
        raise CheckpointError(f"{path}: corrupt safetensors header (claims {n} header bytes, file has {size})")
      try:
        header = json.loads(f.read(n))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    self.metadata = header.pop("__metadata__", {}) or {}
    self._entries = header
    self._start = 8 + n
    for name, entry in header.items():
      begin, end = entry["data_offsets"]
      if entry["dtype"] not in DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
      want = int(np.prod(entry["shape"], dtype=np.int64)) * np.dtype(DTYPES[entry["dtype"]]).itemsize
      if end - begin != want:
        raise CheckpointError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {entry['shape']} "
                              f"{entry['dtype']} ({want} expected)")
      if self._start + end > size:
        raise CheckpointError(f"{path}: truncated: tensor {name!r} ends at byte {self._start + end}, "
                              f"the file has {size}")
    self._file = open(path, "rb")

  def keys(self) -> list[str]:
    return list(self._entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._entries[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    entry = self._entries[name]
    begin, end = entry["data_offsets"]
    dtype = np.dtype(DTYPES[entry["dtype"]]).newbyteorder("<")
    array = np.empty(entry["shape"], dtype)
    self._file.seek(self._start + begin)
    if self._file.readinto(memoryview(array.reshape(-1).view(np.uint8))) != end - begin:
      raise CheckpointError(f"{self.path}: truncated while reading tensor {name!r}")
    return array

  def close(self) -> None:
    self._file.close()


class CheckpointReader:
  """All tensors of a HF checkpoint directory (single file or index + shards), opened lazily."""

  def __init__(self, directory: str):
    self.directory = directory
    index = os.path.join(directory, INDEX_FILE)
    single = os.path.join(directory, SINGLE_FILE)
    if os.path.isfile(index):
      try:
        with open(index) as f:
          weight_map = json.load(f)["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
      self._where = {name: os.path.join(directory, file) for name, file in weight_map.items()}
    elif os.path.isfile(single):
      self._where = {name: single for name in SafetensorsFile(single).keys()}
    else:
      found = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors")) if os.path.isdir(directory) else []
      if len(found) != 1:
        raise CheckpointError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} (found {found or 'no .safetensors'})")
      path = os.path.join(directory, found[0])
      self._where = {name: path for name in SafetensorsFile(path).keys()}
    self._open: dict[str, SafetensorsFile] = {}

  def keys(self) -> list[str]:
    return list(self._where)

  def file_of(self, name: str) -> str:
    return self._where[name]

  def _file(self, name: str) -> SafetensorsFile:
    if name not in self._where:
      raise CheckpointError(f"{self.directory}: tensor {name!r} is missing from the checkpoint")
    path = self._where[name]
    if path not in self._open:
      if not os.path.isfile(path):
        raise CheckpointError(f"{path}: shard listed in {INDEX_FILE} (for {name!r}) does not exist")
      self._open[path] = SafetensorsFile(path)
    file = self._open[path]
    if name not in file.keys():
      raise CheckpointError(f"{path}: tensor {name!r} is listed in {INDEX_FILE} but not in the file")
    return file

  def shape(self, name: str) -> tuple[int, ...]:
    return self._file(name).shape(name)

  def get(self, name: str) -> np.ndarray:
    return self._file(name).get(name)

  def close(self) -> None:
    for f in self._open.values():
      f.close()
    self._open.clear()


def write(directory: str, tensors: Iterator[tuple[str, np.ndarray]], *, max_shard_bytes: int = 5 * 2**30,
          metadata: dict | None = None) -> list[str]:
  """Writes (name, array) pairs as safetensors into `directory`: one `model.safetensors`, or shards
  `model-0000i-of-0000n.safetensors` plus an index once the total passes `max_shard_bytes`.

  Arrays are consumed one at a time; a shard's tensors are held until it is written. Returns the files.
  """
  os.makedirs(directory, exist_ok=True)
  shards: list[list[tuple[str, np.ndarray]]] = [[]]
  size = 0
  for name, array in tensors:
    array = np.ascontiguousarray(array)
    if size and size + array.nbytes > max_shard_bytes:
      shards[-1] = _spill(directory, len(shards), shards[-1], metadata)
      shards.append([])
      size = 0
    shards[-1].append((name, array))
    size += array.nbytes
  total = len(shards)
  if total == 1:
    _write_file(os.path.join(directory, SINGLE_FILE), shards[0], metadata)
    return [SINGLE_FILE]
  shards[-1] = _spill(directory, total, shards[-1], metadata)
  # Shards were written as "model-0000i.tmp" before the count was known; give them their final names.
  weight_map, files = {}, []
  for i, names in enumerate(shards, 1):
    final = f"model-{i:05d}-of-{total:05d}.safetensors"
    os.replace(os.path.join(directory, f"model-{i:05d}.tmp"), os.path.join(directory, final))
    files.append(final)
    weight_map.update({n: final for n in names})
  nbytes = sum(os.path.getsize(os.path.join(directory, f)) for f in files)
  with open(os.path.join(directory, INDEX_FILE), "w") as f:
    json.dump({"metadata": {"total_size": nbytes}, "weight_map": weight_map}, f, indent=2)
  return files + [INDEX_FILE]


def _spill(directory, i, items, metadata) -> list[str]:
  _write_file(os.path.join(directory, f"model-{i:05d}.tmp"), items, metadata)
  return [name for name, _ in items]


def _write_file(path: str, items: list[tuple[str, np.ndarray]], metadata: dict | None) -> None:
  header, offset = {}, 0
  for name, array in items:
    if array.dtype not in _NAMES:
      raise CheckpointError(f"{path}: tensor {name!r} has dtype {array.dtype}, which safetensors cannot store")
    header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    offset += array.nbytes
  header["__metadata__"] = {"format": "pt", **(metadata or {})}
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # Tensor data starts 8-byte aligned.
  with open(path + ".partial", "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for _, array in items:
      f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
  os.replace(path + ".partial", path)
