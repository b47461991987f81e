"""ONNX Runtime as CPU users deploy BERT: transformers' model exported with `torch.onnx`, fused by
`onnxruntime.transformers.optimizer` (attention, LayerNorm, GELU, embeddings), optionally quantized to int8
(`quantize_dynamic`), run in an InferenceSession with the same threads as torch. Needs the `bench` extra
(`onnxruntime`, `onnx`, `onnxscript`).

The model is exported with eager attention: the optimizer's attention fusion matches that graph (the sdpa export
leaves attention unfused). `fused` reports what the optimizer fused, so a run shows whether the fast path was taken.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OrtClassifier:
    """An exported, fused BertForSequenceClassification: `logits(encoding)` -> float32 tensor [batch, labels].

    `int8`: the fused graph then quantized the way ORT's docs deploy it on CPU, `quantize_dynamic` with its defaults
    (int8 weights per tensor, activations quantized per tensor at run time)."""

    def __init__(self, hf_model: torch.nn.Module, threads: int, folder: str | None = None, int8: bool = False) -> None:
        import onnx
        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers.optimizer import optimize_model

        config = hf_model.config
        folder = Path(folder or tempfile.mkdtemp(prefix="minibert-ort-"))
        raw, fused_path = folder / "model.onnx", folder / "model-fused.onnx"
        export_eager(hf_model, raw)
        optimized = optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                                   hidden_size=config.hidden_size)
        self.fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        optimized.save_model_to_file(str(fused_path))
        if int8:
            # the fused graph's contrib ops (Attention, SkipLayerNorm) defeat ONNX shape inference: float is the
            # type of every tensor it cannot name (what ORT's error message advises)
            quantize_dynamic(str(fused_path), str(folder / "model-fused-int8.onnx"), weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            fused_path = folder / "model-fused-int8.onnx"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(fused_path), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}

    def logits(self, encoding: dict[str, torch.Tensor]) -> torch.Tensor:
        feed = {k: encoding[k].numpy().astype(np.int64) for k in INPUTS if k in self.input_names}
        return torch.from_numpy(self.session.run(["logits"], feed)[0])


def export_eager(hf_model: torch.nn.Module, path: Path) -> None:
    """torch.onnx.export with dynamic batch and sequence axes, attention switched to eager for the export."""
    previous = hf_model.config._attn_implementation
    hf_model.config._attn_implementation = "eager"
    try:
        example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in INPUTS)
        axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
        torch.onnx.export(hf_model.eval(), example, str(path), input_names=list(INPUTS), output_names=["logits"],
                          dynamic_axes={**axes, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    finally:
        hf_model.config._attn_implementation = previous
