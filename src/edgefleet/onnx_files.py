"""ONNX models that keep their weights in external-data files beside the ``.onnx`` file.

edgefleet copies, uploads and caches a model as one file, so ``inline_external_data``
writes such a model as one file first. onnx is imported inside the functions because the
agent and the operator CLI run without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.errors import InvalidInputError

if TYPE_CHECKING:
    import onnx

__all__ = ["MAX_SINGLE_FILE_BYTES", "external_data_locations", "inline_external_data"]

# protobuf cannot serialize a message of 2 GiB or more, so an ONNX model whose weights
# add up to that must keep them in external data.
MAX_SINGLE_FILE_BYTES = 2**31 - 1

_SAVE_AS_ONE_FILE = "onnx.save(onnx.load(path), out_path, save_as_external_data=False)"


def external_data_locations(model: onnx.ModelProto) -> list[str]:
    """Return the external-data file names that ``model``'s tensors refer to, sorted."""
    import onnx

    locations = set()
    for tensor in _tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        for entry in tensor.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    return sorted(locations)


def inline_external_data(
    path: Path, directory: Path, *, error: type[Exception] = InvalidInputError
) -> Path | None:
    """Write the model at ``path`` with its external data into ``directory`` as one file.

    Returns the new file, named like ``path``, or ``None`` when the model has no external
    data or is no ONNX model at all, which the caller's own checks then report. Raises
    ``error`` when a data file is missing or when the model with its weights reaches
    ``MAX_SINGLE_FILE_BYTES``.
    """
    import onnx
    from onnx import external_data_helper

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf DecodeError, OSError
        return None
    locations = external_data_locations(model)
    if not locations:
        return None

    names = ", ".join(locations)
    missing = [name for name in locations if not (path.parent / name).is_file()]
    if missing:
        raise error(
            f"{path.name} keeps its weights in a separate file ({names}), and "
            f"{', '.join(missing)} is missing from {path.parent}; put it beside the model, "
            f"or save the model as one file with {_SAVE_AS_ONE_FILE}"
        )
    total = path.stat().st_size + sum((path.parent / name).stat().st_size for name in locations)
    if total >= MAX_SINGLE_FILE_BYTES:
        raise error(
            f"{path.name} with its weights in {names} is {total / 2**30:.1f} GiB; edgefleet "
            "handles models as one ONNX file, which protobuf limits to 2 GiB, so make the "
            "model smaller or quantize it before registering"
        )
    try:
        # onnx rejects locations that are absolute or leave the model's folder.
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # onnx raises ValidationError, OSError or ValueError
        raise error(f"reading the weights of {path.name} from {names} failed: {exc}") from exc

    directory.mkdir(parents=True, exist_ok=True)
    single = directory / path.name
    onnx.save(model, str(single), save_as_external_data=False)
    return single


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _attribute_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node)


def _attribute_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        if attribute.HasField("g"):
            yield from _graph_tensors(attribute.g)
        for subgraph in attribute.graphs:
            yield from _graph_tensors(subgraph)
