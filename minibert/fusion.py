"""Fused elementwise kernels for CPU inference: the parts of an encoder layer around its attention kernel, compiled
by `torch.compile` (inductor), chosen per forward.

Eager PyTorch runs each elementwise op as its own pass over memory. In an int8 layer that is, around each of its
four matmuls, the input's quantization (smoothing division, abs, max, divide, round, cast) and the output's
dequantization (two scales and the bias), then GELU, two residual adds and two LayerNorms. Inductor fuses them into
a few C++ loops around the matmuls, which stay library calls (`torch._int_mm`, oneDNN/MKL GEMMs). Two regions per
layer are compiled, `projection` (the q/k/v matmul) and `output_half` (attention's output projection, add & norm,
feed-forward, add & norm); the attention kernel between them stays eager, since packing's per-sequence calls have
data-dependent shapes. One graph serves every layer and every token count from 2 (the token dimension is marked
dynamic; a batch of a single token runs eager, since dynamo would specialize size 1 into a graph of its own), and the
[CLS]-only last layer of a classifier (a row per sequence) runs its output half eager.

The compiled layer is exact to float rounding against the eager one in float32; in int8 a value that float rounding
moves across a quantization step's midpoint rounds to the neighbouring step, so outputs differ by int8 rounding
(tests/test_fusion.py). bench/fused_layers.py measures it; bench/README.md ("How `auto` chooses") has the numbers
behind auto's choice.

Settings (`BertPreTrainedModel.fuse`): "off"; "on": every CPU inference forward (no gradient, no autocast, not
inside torch.compile); "auto" (the default): int8 models, whose first forward in a process compiles (3-4 s with
torch's inductor cache warm, about 18 s on a fresh machine; a server does it in its warm-up). Every int8 forward then
runs fused, so that `predict` and `serve` give the same answers to the last bit. Float models stay eager under
auto: compiled, their encoder ran at 0.9-1.01x eager's speed (bench/README.md), not worth a compile. Where inductor
cannot build (no C++ compiler), the first fused forward says so once in the log and the model stays eager.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

from minibert.errors import MinibertError

logger = logging.getLogger("minibert")

SETTINGS = ("auto", "on", "off")


def check_setting(setting: str) -> str:
    if setting not in SETTINGS:
        raise MinibertError(f"unknown fusion setting {setting!r}; choose one of {', '.join(SETTINGS)}.")
    return setting


def use_fused(setting: str, *, tokens: int, quantized: bool, device: torch.device, training: bool, autocast: bool,
              compiling: bool) -> bool:
    """Whether a forward over `tokens` real tokens runs the compiled regions (module docstring)."""
    inference = not (training or compiling or autocast or torch.is_grad_enabled())
    # a single token would compile a graph of its own (dynamo specializes size 1): not worth it
    if setting == "off" or not inference or device.type != "cpu" or tokens < 2 or _broken:
        return False
    return setting == "on" or quantized


_broken: list[str] = []  # why inductor could not build here, once it failed: every model stays eager after that


def compiled(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`fn(module, *tensors)` compiled once for every token count (dim 0 of each tensor); falls back to `fn` itself,
    for good, where inductor cannot build."""
    def run(module: torch.nn.Module, *tensors: torch.Tensor) -> torch.Tensor:
        if _broken:
            return fn(module, *tensors)
        for tensor in tensors:
            torch._dynamo.mark_dynamic(tensor, 0)
        try:
            return _compile(fn)(module, *tensors)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            cause = error.inner_exception
            _broken.append(f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0]}")
            logger.warning("fused kernels are off: torch.compile could not build them on this machine (%s); "
                           "the model runs eager, as correct and up to a fifth slower in int8.", _broken[0])
            return fn(module, *tensors)

    return run


@functools.cache
def _compile(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    # sizes static but for the dims marked dynamic per call; the thread count read at run time, as eager kernels do
    # (a server's worker threads each set their own), not baked into the generated loops at compile time; the
    # vector width named (`_vector_bits`)
    return torch.compile(fn, dynamic=False, options={"cpp.dynamic_threads": True, "cpp_wrapper": True,
                                                     "cpp.simdlen": _vector_bits()})


def _vector_bits() -> int:
    """The SIMD width inductor generates code for here (512 with AVX512, 256 with AVX2, 0 for none), named in the
    compile options so that it is part of the key of inductor's on-disk cache. Left unnamed, inductor chooses it
    from the CPU and ATEN_CPU_CAPABILITY but does not key its cache by it: a process with ATEN_CPU_CAPABILITY=avx2
    after an AVX512 one, sharing the cache, ran the AVX512 kernels built for AVX2 and computed garbage (NaN logits);
    so would any two CPUs sharing a cache folder."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return pick_vec_isa().bit_width()
