"""BERT-style encoders: loading MiniLM sentence encoders, export, head and FFN pruning.

The encoder here is a plain-torch BERT (the layout of Hugging Face's ``BertModel``), so
a checkpoint such as sentence-transformers' all-MiniLM-L6-v2 loads from its
``model.safetensors``, ``config.json`` and ``vocab.txt`` without ``transformers``,
``tokenizers`` or ``safetensors`` installed. Sentence embeddings are the attention-masked
mean of the last hidden states, L2-normalised, as sentence-transformers computes them.

Pruning removes whole attention heads (rows of query, key and value, columns of the
output projection) and FFN neurons (rows of the intermediate layer, columns of the
output layer). The hidden size is left alone because every residual add and layer norm
shares it. These groups are cut directly rather than through torch-pruning's graph,
because inside one layer they are the complete set of coupled tensors.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import math
import re
import struct
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgefleet.compress.configs import (
    ImportanceCriterion,
    Stage,
    TechniqueConfig,
    register_config,
)
from edgefleet.compress.errors import ConfigError, ExportError, ModelLoadError
from edgefleet.compress.handlers import TechniqueContext, register_handler
from edgefleet.compress.training import train_classifier

__all__ = [
    "SentenceEncoder",
    "TransformerPruningConfig",
    "WordPieceTokenizer",
    "distill_embeddings",
    "distill_to_fewer_layers",
    "export_sentence_encoder",
    "load_sentence_encoder",
    "prune_transformer",
]

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate query, key and value projections."""

    def __init__(self, hidden: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.head_dim = head_dim
        self.query = nn.Linear(hidden, heads * head_dim)
        self.key = nn.Linear(hidden, heads * head_dim)
        self.value = nn.Linear(hidden, heads * head_dim)

    def forward(self, hidden: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        query, key, value = (
            split(self.query(hidden)),
            split(self.key(hidden)),
            split(self.value(hidden)),
        )
        scores = query @ key.transpose(-1, -2) / math.sqrt(self.head_dim) + mask_bias
        context = scores.softmax(dim=-1) @ value
        return context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)


class BertLayer(nn.Module):
    """Post-norm transformer layer: attention, add and norm, GELU FFN, add and norm."""

    def __init__(self, hidden: int, heads: int, head_dim: int, intermediate: int, eps: float):
        super().__init__()
        self.attention = SelfAttention(hidden, heads, head_dim)
        self.attention_output = nn.Linear(heads * head_dim, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, hidden: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        if self.attention.num_heads:
            attended = self.attention_output(self.attention(hidden, mask_bias))
            hidden = self.attention_norm(hidden + attended)
        else:
            hidden = self.attention_norm(hidden + self.attention_output.bias)
        return self.output_norm(hidden + self.output(F.gelu(self.intermediate(hidden))))


class BertEncoder(nn.Module):
    """A stack of ``BertLayer``; input hidden states (N, L, H) and an attention mask (N, L)."""

    def __init__(
        self, *, hidden: int, layers: int, heads: int, intermediate: int, eps: float = 1e-12
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            BertLayer(hidden, heads, hidden // heads, intermediate, eps) for _ in range(layers)
        )

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Padding positions get a large negative score, so softmax gives them no weight.
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * -1e4
        for layer in self.layers:
            hidden = layer(hidden, mask_bias)
        return hidden


class SentenceEncoder(nn.Module):
    """BERT embeddings, ``BertEncoder`` and masked mean pooling, L2-normalised.

    Inputs are ``input_ids`` and ``attention_mask``, int64 of shape (N, L); the output is
    (N, hidden) float32 sentence embeddings.
    """

    def __init__(self, config: dict[str, int | float]) -> None:
        super().__init__()
        hidden = int(config["hidden_size"])
        self.word_embeddings = nn.Embedding(int(config["vocab_size"]), hidden)
        self.position_embeddings = nn.Embedding(int(config["max_position_embeddings"]), hidden)
        self.token_type_embeddings = nn.Embedding(int(config["type_vocab_size"]), hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=float(config["layer_norm_eps"]))
        self.encoder = BertEncoder(
            hidden=hidden,
            layers=int(config["num_hidden_layers"]),
            heads=int(config["num_attention_heads"]),
            intermediate=int(config["intermediate_size"]),
            eps=float(config["layer_norm_eps"]),
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        embedded = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings.weight[0]
        )
        hidden = self.encoder(self.embedding_norm(embedded), attention_mask)
        mask = attention_mask[..., None].to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)


class WordPieceTokenizer:
    """BERT's uncased tokenizer: lower-case, strip accents, split punctuation, WordPiece.

    NOTE: Chinese characters are not split into single characters as BERT's basic
    tokenizer does; English text tokenizes the same.
    """

    def __init__(self, vocab_path: Path, *, max_length: int = 128) -> None:
        tokens = vocab_path.read_text(encoding="utf-8").splitlines()
        self.vocab = {token: index for index, token in enumerate(tokens)}
        self.max_length = max_length
        for special in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"):
            if special not in self.vocab:
                raise ModelLoadError(f"{vocab_path} has no {special} token")

    def encode(self, texts: Sequence[str], *, length: int | None = None) -> dict[str, np.ndarray]:
        """Return ``input_ids`` and ``attention_mask`` (int64, N x L), padded to ``length``."""
        length = length or self.max_length
        ids = np.full((len(texts), length), self.vocab["[PAD]"], dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, text in enumerate(texts):
            pieces = [self.vocab["[CLS]"], *self._wordpieces(text)][: length - 1]
            pieces.append(self.vocab["[SEP]"])
            ids[row, : len(pieces)] = pieces
            mask[row, : len(pieces)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def _wordpieces(self, text: str) -> list[int]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(char for char in text if unicodedata.category(char) != "Mn")
        words = re.findall(r"\w+|[^\w\s]", text)
        pieces: list[int] = []
        for word in words:
            pieces.extend(self._split_word(word))
        return pieces

    def _split_word(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.vocab["[UNK]"]]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                candidate = word[start:end] if start == 0 else "##" + word[start:end]
                if candidate in self.vocab:
                    pieces.append(self.vocab[candidate])
                    break
                end -= 1
            if end == start:
                return [self.vocab["[UNK]"]]
            start = end
        return pieces


def load_sentence_encoder(model_dir: Path) -> tuple[SentenceEncoder, WordPieceTokenizer]:
    """Load a BERT sentence encoder from ``config.json``, ``model.safetensors``, ``vocab.txt``.

    Raises ``ModelLoadError`` when a file is missing or a weight has an unexpected shape.
    """
    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / "config.json").read_text())
        tensors = _read_safetensors(model_dir / "model.safetensors")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the encoder in {model_dir}: {exc}") from exc
    model = SentenceEncoder(config)
    state = {_our_name(name): tensor for name, tensor in tensors.items()}
    # Mean pooling does not use BERT's [CLS] pooler, and position ids are arange(L).
    for unused in ("position_ids", "pooler.dense.weight", "pooler.dense.bias"):
        state.pop(unused, None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights in {model_dir} do not fit a BERT encoder: {exc}") from exc
    return model.eval(), WordPieceTokenizer(model_dir / "vocab.txt")


def export_sentence_encoder(model: SentenceEncoder, path: Path, *, length: int) -> Path:
    """Export ``model`` to ONNX (opset 18) with a dynamic batch and sequence ``length``."""
    example = (torch.ones(2, length, dtype=torch.int64), torch.ones(2, length, dtype=torch.int64))
    batch = torch.export.Dim("batch")
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            program = torch.onnx.export(
                model.eval(),
                example,
                dynamo=True,
                opset_version=18,
                input_names=["input_ids", "attention_mask"],
                output_names=["sentence_embedding"],
                dynamic_shapes=({0: batch}, {0: batch}),
                optimize=True,
            )
            program.save(str(path), external_data=False)
    except Exception as exc:  # the exporter raises many unrelated types
        raise ExportError(f"exporting the sentence encoder failed: {exc}") from exc
    return path


@register_config
@dataclasses.dataclass(frozen=True)
class TransformerPruningConfig(TechniqueConfig):
    """Remove ``head_ratio`` of each layer's attention heads and ``ffn_ratio`` of its FFN.

    Applies to models built from ``BertLayer``. Taylor importance uses the gradients of
    the classification loss on training batches. ``finetune_epochs`` trains afterwards.
    """

    TYPE: ClassVar[str] = "transformer_pruning"
    VERSION: ClassVar[int] = 1
    STAGE: ClassVar[Stage] = Stage.TORCH

    head_ratio: float = 0.25
    ffn_ratio: float = 0.25
    importance: ImportanceCriterion = ImportanceCriterion.MAGNITUDE
    finetune_epochs: int = 0
    learning_rate: float = 1e-4
    batch_size: int = 32
    seed: int = 0

    def validate(self) -> None:
        for name in ("head_ratio", "ffn_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(
                    f"{self.TYPE}: {name} must be in [0, 1), got {getattr(self, name)}"
                )
        if self.head_ratio == 0.0 and self.ffn_ratio == 0.0:
            raise ConfigError(f"{self.TYPE}: head_ratio and ffn_ratio are both 0; nothing to prune")
        if self.finetune_epochs < 0 or self.seed < 0 or self.batch_size < 1:
            raise ConfigError(f"{self.TYPE}: epochs and seed must be >= 0, batch_size >= 1")
        if not 0.0 < self.learning_rate < 1.0:
            raise ConfigError(
                f"{self.TYPE}: learning_rate must be in (0, 1), got {self.learning_rate}"
            )

    def describe(self) -> str:
        return (
            f"prune heads {self.head_ratio:.0%}, FFN {self.ffn_ratio:.0%} ({self.importance.value})"
        )


def prune_transformer(
    model: nn.Module,
    *,
    head_ratio: float,
    ffn_ratio: float,
    importance: ImportanceCriterion = ImportanceCriterion.MAGNITUDE,
) -> dict[str, int]:
    """Remove the least important heads and FFN neurons of every ``BertLayer``, in place.

    Taylor importance reads ``.grad`` of the weights, so the caller backpropagates a loss
    first. Returns the head and FFN neuron counts before and after.
    """
    layers = [module for module in model.modules() if isinstance(module, BertLayer)]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no BertLayer whose heads could be pruned")
    figures = {"heads_before": 0, "heads_after": 0, "ffn_before": 0, "ffn_after": 0}
    with torch.no_grad():
        for layer in layers:
            attention = layer.attention
            heads, dim = attention.num_heads, attention.head_dim
            figures["heads_before"] += heads
            figures["ffn_before"] += layer.intermediate.out_features
            if head_ratio and heads:
                scores = _head_scores(layer, importance)
                keep_heads = _keep(scores, heads - int(heads * head_ratio))
                rows = (keep_heads[:, None] * dim + torch.arange(dim)).flatten()
                for projection in (attention.query, attention.key, attention.value):
                    _slice_linear(projection, rows=rows)
                _slice_linear(layer.attention_output, columns=rows)
                attention.num_heads = len(keep_heads)
            if ffn_ratio:
                neurons = layer.intermediate.out_features
                scores = _group_score(layer.intermediate.weight, 0, importance) + _group_score(
                    layer.output.weight, 1, importance
                )
                keep = _keep(scores, neurons - int(neurons * ffn_ratio))
                _slice_linear(layer.intermediate, rows=keep)
                _slice_linear(layer.output, columns=keep)
            figures["heads_after"] += attention.num_heads
            figures["ffn_after"] += layer.intermediate.out_features
    model.zero_grad(set_to_none=True)
    return figures


@register_handler(TransformerPruningConfig)
def transformer_pruning_step(
    config: TransformerPruningConfig, module: nn.Module, context: TechniqueContext
) -> nn.Module:
    """Return a copy of ``module`` with heads and FFN neurons removed, then fine-tuned."""
    student = copy.deepcopy(module).eval()
    if config.importance is ImportanceCriterion.TAYLOR:
        inputs = torch.from_numpy(context.dataset.x_train[: config.batch_size * 4])
        labels = torch.from_numpy(context.dataset.y_train[: config.batch_size * 4])
        F.cross_entropy(student(inputs), labels).backward()
    figures = prune_transformer(
        student,
        head_ratio=config.head_ratio,
        ffn_ratio=config.ffn_ratio,
        importance=config.importance,
    )
    context.details.update({name: float(value) for name, value in figures.items()})
    context.progress(
        f"{config.describe()}: heads {figures['heads_before']} -> {figures['heads_after']}, "
        f"FFN neurons {figures['ffn_before']} -> {figures['ffn_after']}"
    )
    if config.finetune_epochs:
        train_classifier(
            student,
            context.dataset,
            epochs=config.finetune_epochs,
            seed=config.seed,
            learning_rate=config.learning_rate,
            batch_size=config.batch_size,
            progress=context.progress,
        )
    return student.eval()


def distill_to_fewer_layers(
    teacher: SentenceEncoder,
    keep_layers: Sequence[int],
    batches: Sequence[dict[str, np.ndarray]],
    *,
    epochs: int,
    learning_rate: float = 5e-5,
    progress: Callable[[str], None] | None = None,
) -> SentenceEncoder:
    """Return a student with the teacher's layers ``keep_layers``, distilled on ``batches``.

    The student starts from the teacher's weights (embeddings and the chosen layers) and
    learns to reproduce the teacher's sentence embeddings: the loss is the mean squared
    error between the two embeddings, the objective sentence-transformers uses to distil
    encoders. Logit distillation (``distillation_loss``) needs class outputs, which a
    sentence encoder does not have.
    """
    if not keep_layers or max(keep_layers) >= len(teacher.encoder.layers):
        raise ConfigError(
            f"keep_layers must name layers 0..{len(teacher.encoder.layers) - 1}, got {keep_layers}"
        )
    student = copy.deepcopy(teacher)
    student.encoder.layers = nn.ModuleList(
        copy.deepcopy(teacher.encoder.layers[i]) for i in keep_layers
    )
    return distill_embeddings(
        student, teacher, batches, epochs=epochs, learning_rate=learning_rate, progress=progress
    )


def distill_embeddings(
    student: SentenceEncoder,
    teacher: SentenceEncoder,
    batches: Sequence[dict[str, np.ndarray]],
    *,
    epochs: int,
    learning_rate: float = 5e-5,
    progress: Callable[[str], None] | None = None,
) -> SentenceEncoder:
    """Train ``student`` in place to reproduce ``teacher``'s sentence embeddings; return it.

    The loss is the squared error summed over the embedding, averaged over sentences.
    """
    targets = []
    with torch.no_grad():
        for batch in batches:
            targets.append(teacher.eval()(*_tensors(batch)))
    optimizer = torch.optim.AdamW(student.parameters(), lr=learning_rate)
    for epoch in range(epochs):
        student.train()
        total = 0.0
        for batch, target in zip(batches, targets, strict=True):
            loss = F.mse_loss(student(*_tensors(batch)), target) * target.shape[1]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        if progress is not None:
            mean_loss = total / len(batches)
            progress(f"embedding distillation epoch {epoch + 1}/{epochs}: loss {mean_loss:.4f}")
    return student.eval()


def _tensors(batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])


def _head_scores(layer: BertLayer, importance: ImportanceCriterion) -> torch.Tensor:
    attention = layer.attention
    heads, dim = attention.num_heads, attention.head_dim
    total = torch.zeros(heads)
    for projection in (attention.query, attention.key, attention.value):
        total += _group_score(projection.weight, 0, importance).view(heads, dim).sum(dim=1)
    total += _group_score(layer.attention_output.weight, 1, importance).view(heads, dim).sum(dim=1)
    return total


def _group_score(weight: torch.Tensor, axis: int, importance: ImportanceCriterion) -> torch.Tensor:
    """Return one score per row (axis 0) or column (axis 1) of ``weight``."""
    if importance is ImportanceCriterion.TAYLOR:
        if weight.grad is None:
            raise ConfigError("Taylor importance needs gradients; backpropagate a loss first")
        values = (weight * weight.grad).abs()
    else:
        values = weight.pow(2)
    return values.sum(dim=1 - axis)


def _keep(scores: torch.Tensor, count: int) -> torch.Tensor:
    return scores.topk(max(count, 0)).indices.sort().values


def _slice_linear(
    layer: nn.Linear, *, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None
) -> None:
    weight = layer.weight.data
    if rows is not None:
        weight = weight[rows]
        if layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias.data[rows].clone())
        layer.out_features = len(rows)
    if columns is not None:
        weight = weight[:, columns]
        layer.in_features = len(columns)
    layer.weight = nn.Parameter(weight.clone())


_NAME_RULES = [
    (r"^embeddings\.word_embeddings", "word_embeddings"),
    (r"^embeddings\.position_embeddings", "position_embeddings"),
    (r"^embeddings\.token_type_embeddings", "token_type_embeddings"),
    (r"^embeddings\.LayerNorm", "embedding_norm"),
    (r"^embeddings\.position_ids$", "position_ids"),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.", r"encoder.layers.\1.attention."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense", r"encoder.layers.\1.attention_output"),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm", r"encoder.layers.\1.attention_norm"),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense", r"encoder.layers.\1.intermediate"),
    (r"^encoder\.layer\.(\d+)\.output\.dense", r"encoder.layers.\1.output"),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm", r"encoder.layers.\1.output_norm"),
]


def _our_name(name: str) -> str:
    for pattern, replacement in _NAME_RULES:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    return name


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file: an 8-byte little-endian header length, a JSON header
    of dtype, shape and byte offsets per tensor, then the raw little-endian data."""
    data = path.read_bytes()
    (header_length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_length])
    body = memoryview(data)[8 + header_length :]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"tensor {name} has unsupported dtype {entry['dtype']}")
        start, end = entry["data_offsets"]
        array = np.frombuffer(body[start:end], dtype=dtype).reshape(entry["shape"])
        tensors[name] = torch.from_numpy(array.astype(np.float32 if dtype != np.int64 else dtype))
    return tensors
