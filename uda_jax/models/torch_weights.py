"""ImageNet weights from PyTorch files into the flax backbone, and back.

The official CGDM and MetaAlign code starts from torchvision's ImageNet ResNets. This module
reads the files users actually have and checks them strictly against the backbone's variables:

* torchvision ``.pth`` state dicts, e.g. ``resnet50-11ad3fa6.pth`` (``IMAGENET1K_V2``),
  ``resnet50-0676ba61.pth`` (``IMAGENET1K_V1``, the weights of the CGDM/MetaAlign era),
  ``resnet101-63fe2227.pth`` (V1), ``resnet101-cd907fc2.pth`` (V2), all under
  ``https://download.pytorch.org/models/``; torch caches them in ``~/.cache/torch/hub/checkpoints``;
* timm checkpoints (``model.safetensors`` or ``pytorch_model.bin``) of the plain ResNets
  ``resnet50.tv_in1k`` (= torchvision V1), ``resnet50.tv2_in1k``, ``resnet50.a1_in1k``,
  ``resnet101.tv_in1k``, ...: ``huggingface-cli download timm/resnet50.tv_in1k`` (or
  ``hf download``) puts ``model.safetensors`` in the Hugging Face cache. timm's ``resnet50d``
  and other deep-stem variants have a different layout and are rejected.

``.safetensors`` is read with ``safetensors.numpy`` (no torch needed). A ``.pth``/``.bin`` file
(torch's zip format) is read with ``torch.load(weights_only=True)`` when torch is installed and
otherwise by a small reader here that unpickles tensors only. Keys follow torchvision's names;
``fc.*`` and ``num_batches_tracked`` are ignored; conv kernels go from OIHW to HWIO, Linear
weights from [out, in] to [in, out]. A flax module named ``layer1_0`` is torch's ``layer1.0``.

Typical use::

    params, stats = network.init(key, (224, 224, 3))
    params, stats = load_pretrained_backbone("resnet50-0676ba61.pth", params, stats)
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from flax import traverse_util

from uda_jax.errors import UserError
from uda_jax.models.resnet import ARCHITECTURES

PyTree = Any
StateDict = dict[str, np.ndarray]

# flax leaf name → torch parameter name, per collection
_PARAM_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_STAT_NAMES = {"mean": "running_mean", "var": "running_var"}
_IGNORED = re.compile(r"(^fc\.|(^|\.)num_batches_tracked$)")


# --------------------------------------------------------------------------- reading files


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """The tensors of a ``.pth``/``.bin`` (torch zip) or ``.safetensors`` file as numpy arrays.

    A checkpoint dict that wraps the state dict under ``state_dict`` or ``model`` is unwrapped
    and a ``module.`` prefix (DataParallel) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained weights file not found: {path}")
    with open(path, "rb") as file:
        head = file.read(9)
    if head[:4] == b"PK\x03\x04":
        state = _read_torch_zip(path)
    elif len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0:
        state = _read_safetensors(path)
    elif head[:1] == b"\x80":
        state = _torch_load(path, legacy=True)
    else:
        raise UserError(
            f"{path}: unknown weights format; expected a PyTorch state dict (.pth/.bin, "
            "saved by torch.save) or a .safetensors file"
        )
    return _normalise(state, path)


def _read_safetensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # the library raises several types
        raise UserError(f"{path}: cannot read as .safetensors ({error})") from error


def _read_torch_zip(path: Path) -> dict:
    try:
        import torch  # noqa: F401
    except ImportError:
        return _TorchZipReader(path).load()
    return _torch_load(path, legacy=False)


def _torch_load(path: Path, *, legacy: bool) -> dict:
    try:
        import torch
    except ImportError as error:
        raise UserError(
            f"{path} is in PyTorch's legacy (non-zip) format, which needs torch to read: "
            "pip install torch, or convert it to .safetensors"
        ) from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors come in many types
        raise UserError(
            f"{path}: torch.load(weights_only=True) failed ({error}); save a state dict "
            "(model.state_dict()), not a pickled model"
        ) from error
    return _tensors_to_numpy(state)


def _tensors_to_numpy(tree: Any) -> Any:
    """Replaces torch tensors in nested dicts by numpy arrays (bfloat16 via float32)."""
    import torch

    if isinstance(tree, Mapping):
        return {key: _tensors_to_numpy(value) for key, value in tree.items()}
    if isinstance(tree, torch.Tensor):
        tensor = tree.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.numpy()
    return tree


def _normalise(state: Any, path: Path) -> StateDict:
    """The flat ``{name: array}`` state dict inside a loaded checkpoint."""
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise UserError(f"{path}: expected a state dict of tensors (name → tensor)")
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _TorchZipReader:
    """Reads a ``torch.save`` zip file of tensors without torch: an unpickler that knows only
    ordered dicts, typed storages and ``_rebuild_tensor_v2``/``_rebuild_parameter``."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict:
        try:
            with zipfile.ZipFile(self.path) as archive:
                pkl = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                prefix = pkl[: -len("data.pkl")]
                names = set(archive.namelist())
                big = (
                    prefix + "byteorder" in names
                    and archive.read(prefix + "byteorder").strip() == b"big"
                )
                with archive.open(pkl) as file:
                    return _Unpickler(file, archive, prefix, big).load()
        except UserError:
            raise
        except (StopIteration, zipfile.BadZipFile, pickle.UnpicklingError, KeyError) as error:
            raise UserError(
                f"{self.path}: cannot read as a PyTorch state dict without torch ({error!r}); "
                "install torch or convert the file to .safetensors"
            ) from error


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, big_endian: bool):
        super().__init__(file)
        self.archive, self.prefix, self.big_endian = archive, prefix, big_endian
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, requires_grad, hooks: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return np.dtype(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"unsupported object {module}.{name} in a state dict")

    def persistent_load(self, pid: Any) -> np.ndarray:
        kind, dtype, key, _location, _numel = pid
        if kind != "storage" or not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError(f"unsupported storage {pid!r}")
        if key not in self.storages:
            data = self.archive.read(f"{self.prefix}data/{key}")
            array = np.frombuffer(data, dtype.newbyteorder(">" if self.big_endian else "<"))
            self.storages[key] = array.astype(dtype)
        return self.storages[key]


def _rebuild_tensor(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    """``torch._utils._rebuild_tensor_v2`` on a flat numpy storage: a strided view, copied."""
    del requires_grad, hooks, metadata
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * item for s in stride)
    )
    array = np.array(view)
    return array.astype(np.float32) if array.dtype == ml_dtypes.bfloat16 else array


# --------------------------------------------------------------------------- name mapping


def _torch_key(path: tuple[str, ...], leaf: str) -> str:
    """``("layer1_0", "conv1")``, ``weight`` → ``layer1.0.conv1.weight``."""
    return ".".join([*(part.replace("_", ".") for part in path), leaf])


def _expected(reference: PyTree) -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """torch key → (collection, flax path, torch shape) for every variable of ``reference``."""
    table = {}
    for collection, names in (("params", _PARAM_NAMES), ("batch_stats", _STAT_NAMES)):
        for path, leaf in traverse_util.flatten_dict(dict(reference.get(collection, {}))).items():
            key = _torch_key(path[:-1], names[path[-1]])
            table[key] = (collection, path, _to_torch_shape(tuple(leaf.shape), path[-1]))
    return table


def _to_torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    if leaf == "kernel" and len(shape) == 4:  # HWIO → OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf == "kernel" and len(shape) == 2:  # [in, out] → [out, in]
        return (shape[1], shape[0])
    return shape


def _from_torch(array: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and array.ndim == 4:
        array = array.transpose(2, 3, 1, 0)
    elif leaf == "kernel" and array.ndim == 2:
        array = array.T
    return np.ascontiguousarray(array, dtype=np.float32)


def _to_torch(array: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and array.ndim == 4:
        array = array.transpose(3, 2, 0, 1)
    elif leaf == "kernel" and array.ndim == 2:
        array = array.T
    return np.ascontiguousarray(array)


def describe_resnet(keys: Any) -> str | None:
    """The torchvision ResNet (``resnet50``, ...) whose state-dict keys these are, else None."""
    blocks = collections.defaultdict(set)
    for key in keys:
        match = re.match(r"layer([1-4])\.(\d+)\.", key)
        if match:
            blocks[int(match.group(1))].add(int(match.group(2)))
    counts = tuple(len(blocks[stage]) for stage in (1, 2, 3, 4))
    kind = "bottleneck" if any(".conv3." in key for key in keys) else "basic"
    for name, architecture in ARCHITECTURES.items():
        if architecture == (kind, counts):
            return name
    return None


# --------------------------------------------------------------------------- import / export


def import_state_dict(
    state_dict: Mapping[str, np.ndarray], reference: PyTree, *, source: str = ""
) -> PyTree:
    """Flax variables ``{"params", "batch_stats"}`` shaped like ``reference`` from torch tensors.

    ``reference`` gives the expected names and shapes (real arrays or ``jax.eval_shape``
    structs). Every variable must be in ``state_dict`` with the right shape and nothing else may
    be (``fc.*`` and ``num_batches_tracked`` aside); errors name the keys and, for ResNets, the
    architectures of file and model. ``source`` names the file in messages.
    """
    where = f"{source}: " if source else ""
    expected = _expected(reference)
    given = {key: value for key, value in state_dict.items() if not _IGNORED.search(key)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        have, want = describe_resnet(given), describe_resnet(expected)
        if have and want and have != want:
            raise UserError(f"{where}these are {have} weights but the backbone is {want}")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_preview(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
        arch = f" ({want})" if want else ""
        raise UserError(f"{where}weights do not fit the backbone{arch}; " + "; ".join(parts))
    flat: dict[str, dict[tuple[str, ...], np.ndarray]] = {"params": {}, "batch_stats": {}}
    for key, (collection, path, shape) in expected.items():
        array = np.asarray(given[key])
        if tuple(array.shape) != shape:
            raise UserError(
                f"{where}shape mismatch for {key}: the file has {tuple(array.shape)}, "
                f"the backbone expects {shape}"
            )
        flat[collection][path] = _from_torch(array, path[-1])
    return {name: traverse_util.unflatten_dict(tree) for name, tree in flat.items()}


def _preview(keys: list[str], limit: int = 5) -> str:
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


def export_torch_state_dict(variables: PyTree) -> StateDict:
    """The torch-named state dict (numpy arrays, torch layouts) of flax ``variables``: the
    inverse of :func:`import_state_dict`, e.g. to save as ``.safetensors``."""
    state = {}
    for collection, names in (("params", _PARAM_NAMES), ("batch_stats", _STAT_NAMES)):
        for path, leaf in traverse_util.flatten_dict(dict(variables.get(collection, {}))).items():
            state[_torch_key(path[:-1], names[path[-1]])] = _to_torch(np.asarray(leaf), path[-1])
    return state


def load_pretrained(path: str | os.PathLike, reference: PyTree) -> PyTree:
    """:func:`read_state_dict` then :func:`import_state_dict` against ``reference``."""
    return import_state_dict(read_state_dict(path), reference, source=str(path))


# --------------------------------------------------------------------------- into the network


def backbone_variables(params: PyTree, batch_stats: PyTree) -> PyTree:
    """The backbone's ``{"params", "batch_stats"}`` inside a :class:`Network`'s variables."""
    return {"params": params["g"]["backbone"], "batch_stats": batch_stats["g"]["backbone"]}


def merge_backbone(params: PyTree, batch_stats: PyTree, variables: PyTree) -> tuple[PyTree, PyTree]:
    """``(params, batch_stats)`` of a :class:`Network` with G's backbone replaced by
    ``variables``, which must have the same structure and shapes; other groups are untouched."""
    current = backbone_variables(params, batch_stats)
    for collection in ("params", "batch_stats"):
        old = traverse_util.flatten_dict(dict(current[collection]))
        new = traverse_util.flatten_dict(dict(variables.get(collection, {})))
        if old.keys() != new.keys() or any(tuple(old[k].shape) != tuple(new[k].shape) for k in old):
            raise UserError(f"pretrained {collection} do not match the network's backbone")
    params = {**params, "g": {**params["g"], "backbone": variables["params"]}}
    batch_stats = {**batch_stats, "g": {**batch_stats["g"], "backbone": variables["batch_stats"]}}
    return params, batch_stats


def load_pretrained_backbone(
    path: str | os.PathLike, params: PyTree, batch_stats: PyTree
) -> tuple[PyTree, PyTree]:
    """Reads ``path`` and puts its weights into the backbone of a :class:`Network`'s
    ``(params, batch_stats)`` (float32 numpy leaves; place them on devices as usual)."""
    variables = load_pretrained(path, backbone_variables(params, batch_stats))
    return merge_backbone(params, batch_stats, variables)
