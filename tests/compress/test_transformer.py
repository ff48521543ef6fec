from __future__ import annotations

import json
import struct

import numpy as np
import onnx
import pytest
import torch
from compress_helpers import random_classification
from torch import nn

from edgefleet.compress.configs import DynamicQuantizationConfig
from edgefleet.compress.handlers import TechniqueContext
from edgefleet.compress.quantization import quantize_onnx_dynamic
from edgefleet.compress.runtime import create_session
from edgefleet.compress.transformer import (
    BertEncoder,
    SentenceEncoder,
    TransformerPruningConfig,
    WordPieceTokenizer,
    export_sentence_encoder,
    load_sentence_encoder,
    transformer_pruning_step,
)

TINY_BERT = {
    "vocab_size": 12,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 32,
    "max_position_embeddings": 16,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}


class TinyTextClassifier(nn.Module):
    """Float token features (N, L, 8) -> two BERT layers -> mean -> 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.encoder = BertEncoder(hidden=16, layers=2, heads=4, intermediate=32)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(self.embed(x), torch.ones(x.shape[:2]))
        return self.head(hidden.mean(dim=1))


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_head_and_ffn_pruning_shrinks(importance, tmp_path):
    torch.manual_seed(0)
    dataset = random_classification(32, (5, 8), classes=3)
    context = TechniqueContext(dataset=dataset, work_dir=tmp_path, progress=lambda _line: None)
    config = TransformerPruningConfig(
        head_ratio=0.5, ffn_ratio=0.25, importance=importance, finetune_epochs=1
    )

    pruned = transformer_pruning_step(config, TinyTextClassifier().eval(), context)

    layer = pruned.encoder.layers[0]
    assert layer.attention.num_heads == 2
    assert layer.attention.query.weight.shape == (8, 16)
    assert layer.attention_output.weight.shape == (16, 8)
    assert layer.intermediate.weight.shape == (24, 16)
    assert layer.output.weight.shape == (16, 24)
    assert pruned(torch.from_numpy(dataset.x_val[:2])).shape == (2, 3)
    assert context.details["heads_after"] == 4


def _write_checkpoint(folder, model: SentenceEncoder) -> None:
    names = {
        "word_embeddings": "embeddings.word_embeddings",
        "position_embeddings": "embeddings.position_embeddings",
        "token_type_embeddings": "embeddings.token_type_embeddings",
        "embedding_norm": "embeddings.LayerNorm",
    }
    header, blobs, offset = {}, [], 0
    for name, tensor in model.state_dict().items():
        prefix, _, rest = name.partition(".")
        hf = f"{names[prefix]}.{rest}" if prefix in names else name
        hf = (
            hf.replace("encoder.layers.", "encoder.layer.")
            .replace(".attention.query", ".attention.self.query")
            .replace(".attention.key", ".attention.self.key")
            .replace(".attention.value", ".attention.self.value")
            .replace(".attention_output.", ".attention.output.dense.")
            .replace(".attention_norm.", ".attention.output.LayerNorm.")
            .replace(".intermediate.", ".intermediate.dense.")
            .replace(".output_norm.", ".output.LayerNorm.")
            .replace(".output.weight", ".output.dense.weight")
            .replace(".output.bias", ".output.dense.bias")
        )
        data = tensor.numpy().astype("<f4").tobytes()
        header[hf] = {
            "dtype": "F32",
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(
        struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs)
    )
    (folder / "config.json").write_text(json.dumps(TINY_BERT))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "##s", ",", "!", "a", "b", "c"]
    (folder / "vocab.txt").write_text("\n".join(vocab))


def test_checkpoint_loads_and_exports(tmp_path):
    torch.manual_seed(0)
    original = SentenceEncoder(TINY_BERT).eval()
    _write_checkpoint(tmp_path, original)

    model, tokenizer = load_sentence_encoder(tmp_path)
    batch = tokenizer.encode(["Hello, worlds!", "zzz"], length=8)
    assert batch["input_ids"][0].tolist() == [2, 4, 7, 5, 6, 8, 3, 0]
    assert batch["input_ids"][1].tolist()[:3] == [2, 1, 3]

    inputs = (torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"]))
    with torch.no_grad():
        expected = original(*inputs).numpy()
        assert np.allclose(model(*inputs).numpy(), expected, atol=1e-6)
    path = export_sentence_encoder(model, tmp_path / "encoder.onnx", length=8)
    actual = create_session(path, threads=1).run(None, batch)[0]
    assert np.allclose(actual, expected, atol=1e-4)


def test_tokenizer_requires_special_tokens(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(Exception, match=r"\[CLS\]"):
        WordPieceTokenizer(tmp_path / "vocab.txt")


def _initializer_types(path) -> dict[str, int]:
    model = onnx.load(str(path))
    return {tensor.name: tensor.data_type for tensor in model.graph.initializer}


@pytest.mark.parametrize("include_gather", [False, True])
def test_encoder_dynamic_int8_embedding_option(include_gather, tmp_path):
    torch.manual_seed(0)
    config = dict(TINY_BERT, vocab_size=2000, hidden_size=64, intermediate_size=128)
    model = SentenceEncoder(config).eval()
    fp32 = export_sentence_encoder(model, tmp_path / "encoder.onnx", length=8)
    batch = {
        "input_ids": np.random.default_rng(0).integers(4, 2000, (16, 8)),
        "attention_mask": np.ones((16, 8), dtype=np.int64),
    }

    int8 = quantize_onnx_dynamic(
        fp32, tmp_path / "int8.onnx", DynamicQuantizationConfig(include_gather=include_gather)
    )

    types = _initializer_types(int8)
    embedding = {name: kind for name, kind in types.items() if name.startswith("word_embeddings")}
    assert embedding
    eight_bit = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    assert any(kind in eight_bit for kind in embedding.values()) is include_gather
    expected = create_session(fp32, threads=1).run(None, batch)[0]
    actual = create_session(int8, threads=1).run(None, batch)[0]
    cosine = np.sum(expected * actual, axis=1)  # both outputs are L2-normalised
    assert cosine.min() > 0.98
    # The embedding table is most of this encoder, as it is of MiniLM.
    limit = fp32.stat().st_size / (2.5 if include_gather else 1.0)
    assert int8.stat().st_size < limit
