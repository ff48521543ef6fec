"""Loading user models: a torch factory in a Python file, or an ONNX file."""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
import sys
from pathlib import Path

import torch
from torch import nn

from edgefleet.compress.errors import ModelLoadError
from edgefleet.compress.export import check_onnx_file
from edgefleet.onnx_files import external_data_locations, inline_external_data

__all__ = ["load_onnx_model", "load_torch_model", "module_digest"]


def load_torch_model(spec: str, *, weights: Path | None = None) -> nn.Module:
    """Build a model from ``"path/to/file.py:factory"`` and optionally load weights.

    The file is executed as a Python module (it is the user's own model code) and
    ``factory()`` must return a ``torch.nn.Module``. ``weights`` is a state dict saved with
    ``torch.save``; it is read with ``weights_only=True``, so it cannot run code.
    """
    file_part, separator, factory_name = spec.rpartition(":")
    if not separator or not file_part or not factory_name.isidentifier():
        raise ModelLoadError(
            f"invalid model {spec!r}; expected an .onnx file or 'path/to/file.py:factory'"
        )
    path = Path(file_part)
    if path.suffix != ".py":
        raise ModelLoadError(f"invalid model {spec!r}: {path} is not a .py file")
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")

    path_digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"edgefleet_user_model_{path_digest}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ModelLoadError(f"cannot import {path} as a Python module")
    user_module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = user_module
    try:
        loader_spec.loader.exec_module(user_module)
    except Exception as exc:  # user code can raise anything; report it with the file name
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc

    factory = getattr(user_module, factory_name, None)
    if not callable(factory):
        available = sorted(
            name
            for name, value in vars(user_module).items()
            if callable(value) and not name.startswith("_")
        )
        raise ModelLoadError(
            f"factory {factory_name!r} not found in {path}; callables defined there: "
            f"{', '.join(available) or 'none'}"
        )
    try:
        model = factory()
    except Exception as exc:  # user code
        raise ModelLoadError(f"{spec}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"{spec}() returned {type(model).__name__}; it must return a torch.nn.Module"
        )
    if weights is not None:
        _load_weights(model, Path(weights))
    return model.eval()


def load_onnx_model(path: str | Path, *, inline_dir: Path | None = None) -> Path:
    """Check that ``path`` is a valid ONNX model file and return it as a ``Path``.

    A model that keeps its weights in external-data files is written as one file into
    ``inline_dir``, and that file is returned. Without ``inline_dir`` such a model raises
    ``ModelLoadError``, because edgefleet copies and uploads models as one file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"ONNX file not found: {path}")
    if inline_dir is not None:
        single = inline_external_data(path, inline_dir, error=ModelLoadError)
        if single is not None:
            check_onnx_file(single, error=ModelLoadError)
            return single
    else:
        _reject_external_data(path)
    check_onnx_file(path, error=ModelLoadError)
    return path


def _reject_external_data(path: Path) -> None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError
        raise ModelLoadError(f"{path} is not a valid ONNX model: {exc}") from exc
    locations = external_data_locations(model)
    if locations:
        raise ModelLoadError(
            f"{path.name} keeps its weights in a separate file ({', '.join(locations)}); "
            "save it as one file with onnx.save(onnx.load(path), out_path, "
            "save_as_external_data=False)"
        )


def module_digest(module: nn.Module) -> str:
    """Return a SHA-256 over the module's class, structure and every state tensor."""
    digest = hashlib.sha256()
    digest.update(f"{type(module).__module__}.{type(module).__qualname__}\n".encode())
    digest.update(repr(module).encode())
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_weights(model: nn.Module, weights: Path) -> None:
    if not weights.is_file():
        raise ModelLoadError(f"weights file not found: {weights}")
    try:
        # weights_only=True lets torch's restricted unpickler rebuild tensors and plain
        # containers only, so a weights file cannot run code on the controller.
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"weights {weights} hold pickled Python objects besides tensors, and edgefleet "
            "never unpickles those; save only the tensors with "
            f"torch.save(model.state_dict(), path) ({exc})"
        ) from None
    except Exception as exc:  # zip and torch errors
        raise ModelLoadError(
            f"cannot read weights {weights}: {exc}; save them with torch.save(model.state_dict())"
        ) from exc
    if not isinstance(state, dict):
        raise ModelLoadError(
            f"weights {weights} hold a {type(state).__name__}, not a state dict; save them "
            "with torch.save(model.state_dict())"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights {weights} do not match the model: {exc}") from exc
