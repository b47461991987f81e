"""int8 inference on CPU, written by hand: the encoder's linear layers run as int8 x int8 -> int32 matmuls.

Weights are quantized once, symmetrically per output channel (scale = max |w| of the row / 127, or / 63 on CPUs
without VNNI: `weight_qmax`); activations per token at run time (scale = max |x| of the token / 127), so one
outlier token cannot flatten the others' resolution the way a per-tensor scale does (torch.ao's dynamic
quantization, fbgemm, ONNX Runtime's dynamic int8). The product accumulates in int32 through `torch._int_mm`
(oneDNN, VNNI where the CPU has it) and is dequantized with the two scales and the bias in one pass:
y = (acc · s_x) · s_w + b.

What stays floating point: embeddings, LayerNorm, attention scores and softmax (q·kᵀ and p·v are activation x
activation products), the pooler and every task head (a few rows of work, and the logits read them directly).
All four encoder matmuls (`INT8_LINEARS`) are int8 by default (bench/int8_matmuls.py, bench/README.md). The FFN's
GELU moves into its down matmul, which scales each token by gelu(max h) (`Int8Linear`, `input_activation`).

Smoothing (SmoothQuant, Xiao et al. 2023): BERT's LayerNorm outputs carry a few outlier channels (MiniLM's dims 99
and 63 reach 6-29 where the rest stay under 3), and a per-token scale set by them leaves the other channels a few
int8 steps. The two matmuls that read a LayerNorm output (`SMOOTHED_LINEARS`: q/k/v and the FFN's up) divide each
input channel j by s_j = max|x_j|^α / max|w_j|^(1-α) and multiply the weight's column j by it, which leaves x·wᵀ as
it was and moves the range from the activation into the weight, quantized per output channel. The division runs
on the activation at run time (BERT is post-LayerNorm: the LayerNorm's output is also the residual, so s cannot
fold into it). max|x_j| comes from a forward of seeded random token ids at quantize time: the outlier channels
are the model's, not the data's (calibrating on 256 SST-2 sentences instead gives the same cosine). On MiniLM's
embeddings of short texts this raised the lowest cosine to fp32 from 0.983 to 0.995.

A quantized model is for inference only: training and `save_pretrained` refuse it (the int8 weights are a lossy
copy, and saving them over the float checkpoint would lose the original).
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from minibert.errors import MinibertError

logger = logging.getLogger("minibert")

SCHEMES = ("int8",)
QUANTIZE_HELP = ("int8: run the encoder's matmuls in int8 on the CPU (about 2x fp32 with accuracy within half a "
                 "point, bench/README.md), the rest in float32")  # the --quantize flag of predict, embed and serve
# (module path inside an EncoderLayer) of the matmuls that run in int8; the others keep their float weights.
INT8_LINEARS = ("attention.qkv", "attention.out", "ffn.up", "ffn.down")
SMOOTHED_LINEARS = ("attention.qkv", "ffn.up")  # the two that read a LayerNorm's output
SMOOTHING_ALPHA = 0.5  # SmoothQuant's default; on MiniLM 0.7 gave the same lowest cosine (0.9955 vs 0.9948)
_QMAX = 127  # symmetric: -127..127, so that negating a value never overflows
_QMAX_SATURATING = 63  # weights where the int8 matmul saturates (`weight_qmax`)
_ROWS_PER_CHUNK = 512
INPUT_ACTIVATIONS = ("gelu",)  # the activations an int8 matmul can apply to its input itself (`Int8Linear`)
_GELU_NEGATIVE_BOUND = 0.17  # GELU's lowest value is -0.16997 (at x = -0.7518)


@functools.cache
def weight_qmax() -> int:
    """The largest int8 weight magnitude whose products `torch._int_mm` sums exactly on this CPU: 127, or 63 where it
    saturates. oneDNN without VNNI (AVX2, AVX512 before Cascade Lake) multiplies u8 x s8 with vpmaddubsw, which adds
    each pair of products in int16: the activation shifted to u8 (up to 255) times a weight of 127, twice, overflows
    32,767 and is clipped, silently (ONNX Runtime's `reduce_range` exists for the same reason). With weights within
    ±63 a pair stays under 2·255·63 = 32,130. Probed once with the worst case rather than read off CPU flags, since
    what runs depends on oneDNN's dispatch (and on ONEDNN_MAX_CPU_ISA)."""
    a = torch.full((1, 64), _QMAX, dtype=torch.int8)
    w = torch.full((64, 8), _QMAX, dtype=torch.int8)
    try:
        exact = torch.equal(torch._int_mm(a, w), a.int() @ w.int())
    except (RuntimeError, NotImplementedError) as error:
        raise MinibertError(f"this torch build ({torch.__version__}) has no int8 matmul on this CPU "
                            f"(torch._int_mm: {str(error).splitlines()[0]}); run the model in float.") from error
    if not exact:
        logger.info("int8: this CPU's int8 matmul saturates full-range products (no VNNI); weights are quantized to "
                    "±%d instead of ±%d (one bit less precise).", _QMAX_SATURATING, _QMAX)
    return _QMAX if exact else _QMAX_SATURATING


class Int8Linear(nn.Module):
    """`nn.Linear` with per-output-channel int8 weights and per-token dynamic int8 activations; float in, float out.

    `input_max` (in,): each input channel's largest |x| seen, to smooth the activations with (module docstring).
    `input_activation` "gelu": the layer applies GELU to its input itself and takes each token's scale from the
    largest pre-activation, gelu(max h): GELU increases where it is positive and never falls below -0.17, so
    gelu(max h) is max |gelu(h)| wherever it is at least 0.17 (every token of MiniLM on SST-2 and IMDB: the smallest
    max h was 0.67), and 0.17 bounds |gelu(h)| otherwise. GELU then runs once per element; taking max |gelu(h)|
    instead ran it twice in the fused kernel (one loop for the maximum, one to quantize), the FFN's costliest
    elementwise work."""

    def __init__(self, linear: nn.Linear, input_max: torch.Tensor | None = None,
                 input_activation: str | None = None) -> None:
        super().__init__()
        if input_activation is not None and (input_activation not in INPUT_ACTIVATIONS or input_max is not None):
            raise MinibertError(f"an int8 matmul can apply {' or '.join(INPUT_ACTIVATIONS)} to its input, unsmoothed; "
                                f"not {input_activation!r}{' with smoothing' if input_max is not None else ''}.")
        self.input_activation = input_activation
        if linear.in_features < 2:  # found by tests/test_quantize.py; every k from 2 to 519 was exact
            raise MinibertError("int8 needs layers with at least 2 inputs: torch._int_mm on CPU returns wrong "
                                f"values for 1 (torch {torch.__version__}); keep this model in float.")
        weight = linear.weight.detach().float()
        if input_max is None:
            self.input_divisor = None
        else:
            tiny = torch.finfo(torch.float32).tiny
            divisor = (input_max.float().clamp_min(tiny) ** SMOOTHING_ALPHA
                       / weight.abs().amax(dim=0).clamp_min(tiny) ** (1 - SMOOTHING_ALPHA))
            divisor = divisor.clamp_min(1e-5)  # a channel never seen non-zero keeps a usable step
            self.register_buffer("input_divisor", divisor)  # (in,): x / divisor times weight · divisor is x · weight
            weight = weight * divisor
        scale = weight.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / weight_qmax()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", torch.round(weight / scale[:, None]).to(torch.int8))  # (out, in)
        self.register_buffer("weight_scale", scale)  # (out,)
        bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros(linear.out_features)
        self.register_buffer("bias", bias)
        self.training = False  # inference only, from the start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out), in x's dtype."""
        if x.device.type != "cpu":
            raise MinibertError(f"the int8 model runs on CPU only (torch._int_mm with per-token scales), not on "
                                f"{x.device.type}; load the float model there instead.")
        rows = x.detach().reshape(-1, self.in_features).float()  # (m, in); inference only: no gradient flows
        if torch.compiler.is_compiling():  # fused (minibert.fusion): inductor fuses the passes around the matmul
            out = self._product(rows, torch.empty(rows.shape[0], self.out_features))
        else:
            out = torch.empty(rows.shape[0], self.out_features)
            # 512 tokens at a time: each chunk's temporaries stay small and cached between the quantization, the
            # matmul and the dequantization (1.4-2.4x faster than whole at 9,600 tokens, the same at 600; 1 thread)
            for start in range(0, rows.shape[0], _ROWS_PER_CHUNK):
                self._product(rows[start:start + _ROWS_PER_CHUNK], out[start:start + _ROWS_PER_CHUNK])
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if x.dtype == torch.float32 else out.to(x.dtype)

    def _product(self, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """rows (m, in) float32 -> out (m, out): quantize per token, int8 matmul, dequantize with the bias."""
        if self.input_activation is not None:  # rows are the activation's input: its row maximum sets the scale
            x_scale = _gelu_opaque(rows.amax(dim=1, keepdim=True)).clamp_min_(_GELU_NEGATIVE_BOUND).div_(_QMAX)
            rows = F.gelu(rows)
        else:
            if self.input_divisor is not None:
                rows = rows / self.input_divisor
            # the eager forms measured fastest (600 x 1536): abs().amax() 10x faster than vector_norm(inf), in-place
            # round_ 2x faster than round(x / s), in-place passes 2x faster than one addcmul
            x_scale = rows.abs().amax(dim=1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny).div_(_QMAX)
        q = torch.div(rows, x_scale).round_().to(torch.int8)
        acc = torch._int_mm(q, self.weight.t())  # (rows, out) int32; the transposed view beat a copy
        return torch.mul(acc, x_scale, out=out).mul_(self.weight_scale).add_(self.bias)

    def train(self, mode: bool = True) -> Int8Linear:
        if mode:
            raise MinibertError(_TRAINING_REFUSED)
        return super().train(False)

    def extra_repr(self) -> str:
        applies = f", applies {self.input_activation} to its input" if self.input_activation else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel x per token"
                f"{applies}")


_TRAINING_REFUSED = ("a quantized model is for inference only and cannot be trained; fine-tune the float model and "
                     "quantize the result.")


def quantize_model(model: nn.Module, scheme: str = "int8", keep_float: tuple[str, ...] = (),
                   smooth: bool = True) -> nn.Module:
    """Quantize `model` (any minibert model: `BertModel` or a head on one) in place for CPU inference -> the model,
    in eval mode, with the float parts in float32. `keep_float` names matmuls of `INT8_LINEARS` to leave in float32
    in every layer; `smooth=False` skips the smoothing of `SMOOTHED_LINEARS` (module docstring). Refuses an unknown
    scheme or matmul, a model on another device than the CPU, and a model already quantized."""
    if scheme not in SCHEMES:
        raise MinibertError(f"unknown quantization {scheme!r}; choose one of {', '.join(SCHEMES)}.")
    unknown = sorted(set(keep_float) - set(INT8_LINEARS))
    if unknown:
        raise MinibertError(f"keep_float names {', '.join(unknown)}, which are not int8 matmuls; choose among "
                            f"{', '.join(INT8_LINEARS)}.")
    if getattr(model, "quantization", None) is not None:
        raise MinibertError(f"the model is already quantized ({model.quantization}); load the float model again to "
                            "quantize it differently.")
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise MinibertError(f"int8 quantization runs on CPU only (torch._int_mm with per-token scales), and the "
                            f"model is on {device.type}; quantize it on the CPU, or run the float model there.")
    model.float().eval()
    layers = model.base_model.encoder.layers
    input_max = _input_max(model.base_model, SMOOTHED_LINEARS) if smooth else {}
    for i, layer in enumerate(layers):
        for path in (p for p in INT8_LINEARS if p not in keep_float):
            parent_path, _, name = path.rpartition(".")
            parent = layer.get_submodule(parent_path)
            activation = None
            if path == "ffn.down" and layer.ffn.act.name in INPUT_ACTIVATIONS:  # the down matmul applies it
                activation, layer.ffn.act = layer.ffn.act.name, nn.Identity().eval()
            setattr(parent, name, Int8Linear(getattr(parent, name), input_max.get((i, path)), activation))
    for module in model.modules():  # every BertPreTrainedModel inside (a head's `bert` too) refuses training
        if hasattr(module, "quantization"):
            module.quantization = scheme
    return model


# the calibration forward: 8 sequences of each length, of token ids drawn uniformly from the vocabulary
_CALIBRATION_LENGTHS = (8, 32, 128)
_CALIBRATION_SEQUENCES = 8


@torch.no_grad()
def _input_max(bert: nn.Module, paths: tuple[str, ...]) -> dict[tuple[int, str], torch.Tensor]:
    """{(layer index, path): each input channel's largest |x|} of the float model `bert` over a seeded forward of
    random token ids (module docstring: why random ids suffice)."""
    config, found, hooks = bert.config, {}, []
    for i, layer in enumerate(bert.encoder.layers):
        for path in paths:
            def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor,
                       key: tuple[int, str] = (i, path)) -> None:
                seen = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(dim=0).float()
                found[key] = torch.maximum(found[key], seen) if key in found else seen
            hooks.append(layer.get_submodule(path).register_forward_hook(record))
    generator = torch.Generator().manual_seed(0)
    try:
        for length in _CALIBRATION_LENGTHS:
            length = min(length, config.max_position_embeddings)
            ids = torch.randint(config.vocab_size, (_CALIBRATION_SEQUENCES, length), generator=generator)
            bert(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for hook in hooks:
            hook.remove()
    return found


@torch.library.custom_op("minibert::gelu_opaque", mutates_args=())
def _gelu_opaque(x: torch.Tensor) -> torch.Tensor:
    """GELU that torch.compile calls as it is, for the per-token scale (one value a row): inductor inlined
    F.gelu(max h) into the quantization loop as a scalar erf once every 16 elements (that kernel took 3.0 ms
    instead of 1.3 ms on 800 tokens of MiniLM)."""
    return F.gelu(x)


@_gelu_opaque.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)
