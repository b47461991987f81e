"""Fused elementwise kernels (minibert/fusion.py): the compiled regions against the eager layer they replace — the
int8 matmul bit for bit, whole float encoders to float rounding with padding, a batch of one and lengths 1 and 512,
int8 encoders to int8 rounding on real sentences — one graph for every token count, when `auto` fuses, and the
fall-back where inductor cannot build."""

from __future__ import annotations

import copy
import csv
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch._dynamo.utils import counters

import minibert
from minibert import attention, encoder, fusion
from minibert.errors import MinibertError
from minibert.inference import InferenceModel
from minibert.quantize import Int8Linear, weight_qmax
from tests.reference import TINY, padded_batch
from tests.tiny import write_tiny_model

# the layer sizes of tests/tiny.py's model (positions up to 512), so that its graphs serve every test here
CONFIG = {**TINY, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "num_hidden_layers": 2,
          "max_position_embeddings": 512}
# inductor builds C++ at run time: without a compiler the fused regions fall back to eager, which these tests would
# not see run. Skipped locally, failed in CI (as the page test treats a missing Chromium).
needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None and not os.environ.get("CI"),
                                    reason="no C++ compiler for torch.compile's fused kernels (apt-get install g++)")
BATCHES = {"padded, packed": [5, 17, 1, 9], "batch of one": [12], "512 tokens": [512, 3], "1-token sequences": [1, 1],
           "no padding": [6, 6, 6]}


@pytest.fixture()
def fused_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often each compiled region ran (the eager fall-backs do not count)."""
    calls = {"projection": 0, "output_half": 0}

    def counting(key: str, run):
        def counted(*args):
            calls[key] += 1
            return run(*args)
        return counted

    monkeypatch.setattr(attention, "_fused_projection", counting("projection", attention._fused_projection))
    monkeypatch.setattr(encoder, "_fused_output_half", counting("output_half", encoder._fused_output_half))
    return calls


def float_model(head: str = "BertModel") -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(minibert, head)(minibert.BertConfig(**CONFIG)).eval()


@needs_compiler
def test_compiled_int8_matmul_is_the_eager_one_bit_for_bit():
    """The int8 matmul compiled whole (no 512-row chunks) gives the eager chunked result exactly, with and without
    smoothing, on token counts across the chunk boundary: the same quantization, integers and dequantization."""
    torch.manual_seed(0)
    run = fusion.compiled(lambda linear, x: linear(x))
    with torch.inference_mode():
        for smoothed in (False, True):
            linear = torch.nn.Linear(96, 40)
            int8 = Int8Linear(linear, torch.rand(96) * 10 if smoothed else None)
            for rows in (2, 3, 513, 1100):
                x = torch.randn(rows, 96) * torch.rand(96) * 5
                assert torch.equal(run(int8, x), int8(x)), (smoothed, rows)


# one process's fused int8 matmul against its eager one: "equal" or the largest difference
COMPILED_VS_EAGER = """
import torch
from minibert import fusion
from minibert.quantize import Int8Linear
torch.manual_seed(0)
linear = Int8Linear(torch.nn.Linear(96, 40))
x = torch.randn(5, 96)
with torch.inference_mode():
    compiled, eager = fusion.compiled(lambda linear, x: linear(x))(linear, x), linear(x)
print("equal" if torch.equal(compiled, eager) else (compiled - eager).abs().max().item())
"""


@needs_compiler
def test_kernels_built_for_one_vector_width_are_not_reused_for_another(tmp_path):
    """Inductor's on-disk cache, shared by a process at the CPU's widest vectors and a later one limited to AVX2
    (ATEN_CPU_CAPABILITY, as the AVX2 benchmarks run): the second builds its own kernels and computes what eager
    does (it once got the first's AVX512 code built for AVX2: NaN logits). Where the CPU has no AVX512, both
    processes use AVX2 and this shows only that a shared cache works."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    env.pop("ATEN_CPU_CAPABILITY", None)
    for capability in (None, "avx2"):
        run_env = env if capability is None else {**env, "ATEN_CPU_CAPABILITY": capability}
        result = subprocess.run([sys.executable, "-c", COMPILED_VS_EAGER], env=run_env, capture_output=True,
                                text=True, timeout=300)
        assert result.stdout.strip().splitlines()[-1:] == ["equal"], (capability, result.stdout, result.stderr[-2000:])


@needs_compiler
@pytest.mark.parametrize("head", ["BertModel", "BertForSequenceClassification"])
def test_fused_float_encoder_matches_eager(head, fused_calls):
    """`fuse("on")` on a float32 model: every batch shape (padding removed by packing, a batch of one, 512 tokens,
    sequences of one token) equals the eager forward to float rounding, and the compiled regions did run (a
    classifier's [CLS]-only last layer runs its output half eager)."""
    model = float_model(head)
    out = "last_hidden_state" if head == "BertModel" else "logits"
    with torch.inference_mode():
        for name, lengths in BATCHES.items():
            ids, mask, types = padded_batch(CONFIG["vocab_size"], lengths)
            eager = getattr(model.fuse("off")(input_ids=ids, attention_mask=mask, token_type_ids=types), out)
            before = dict(fused_calls)
            fused = getattr(model.fuse("on")(input_ids=ids, attention_mask=mask, token_type_ids=types), out)
            keep = mask.bool() if out == "last_hidden_state" else slice(None)
            assert (fused[keep] - eager[keep]).abs().max() < 1e-5, name
            layers = CONFIG["num_hidden_layers"]
            assert fused_calls["projection"] - before["projection"] == layers, name
            assert fused_calls["output_half"] - before["output_half"] == layers - (head != "BertModel"), name


def test_a_single_token_runs_eager(fused_calls):
    model = float_model().fuse("on")
    ids, mask, types = padded_batch(CONFIG["vocab_size"], [1])
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
    assert fused_calls == {"projection": 0, "output_half": 0}


@needs_compiler
def test_one_graph_serves_every_token_count():
    """After the first fused forward, other token counts and other layers compile nothing more."""
    model = float_model().fuse("on")
    with torch.inference_mode():
        model(*padded_batch(CONFIG["vocab_size"], [7, 3])[:2])
        graphs = counters["stats"]["unique_graphs"]
        for lengths in ([30, 2, 9], [100], [4, 4], [64, 1, 1, 1]):
            model(*padded_batch(CONFIG["vocab_size"], lengths)[:2])
    assert counters["stats"]["unique_graphs"] == graphs


@needs_compiler
def test_fused_int8_minilm_matches_eager_to_int8_rounding(minilm_encoders, shared_dir, fused_calls):
    """The real MiniLM in int8 on 300 SST-2 sentences, fused (auto's choice for int8) against eager. Float rounding
    in a compiled LayerNorm or GELU moves a few values across a quantization step's midpoint (one step of a token's
    range, up to ~0.2 on a channel beside an outlier), which later layers carry on: the two are as far apart as
    int8 rounding makes them, and equally close to float32. Measured: cosine fused to eager mean 0.99979, lowest
    0.9973; to fp32 mean 0.99868 / lowest 0.9955 fused, 0.99867 / 0.9947 eager (test_quantize.py's bars: 0.998 and
    0.99, or 0.997 and 0.989 with a CPU's ±63 weights)."""
    with (shared_dir / "data" / "sst2" / "dev.tsv").open() as f:
        texts = [row["sentence"] for row in csv.DictReader(f, delimiter="\t")][:300]
    float_encoder, int8_encoder = minilm_encoders
    fp = float_encoder.encode(texts)
    fused = int8_encoder.encode(texts)
    assert fused_calls["output_half"] > 0  # auto fused the int8 model
    int8_encoder.model.fuse("off")
    try:
        eager = int8_encoder.encode(texts)
    finally:
        int8_encoder.model.fuse("auto")
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(fused, eager).mean() >= 0.9995 and cosine(fused, eager).min() >= 0.99
    mean_bar, lowest_bar = (0.998, 0.99) if weight_qmax() == 127 else (0.997, 0.989)
    for vectors in (fused, eager):
        assert cosine(vectors, fp).mean() >= mean_bar and cosine(vectors, fp).min() >= lowest_bar


@needs_compiler
def test_auto_fuses_int8_inference_only(fused_calls):
    """auto: int8 inference fuses; float models, gradients and autocast stay eager; "off" never fuses."""
    ids, mask, _ = padded_batch(CONFIG["vocab_size"], [9, 4])
    model = float_model()
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
    assert fused_calls["output_half"] == 0  # float, auto: eager
    int8 = copy.deepcopy(model).quantize("int8")
    int8(input_ids=ids, attention_mask=mask)  # gradients enabled (a training-style call): eager
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        int8(input_ids=ids, attention_mask=mask)
    assert fused_calls["output_half"] == 0
    with torch.inference_mode():
        int8(input_ids=ids, attention_mask=mask)
        assert fused_calls["output_half"] == CONFIG["num_hidden_layers"]
        int8.fuse("off")(input_ids=ids, attention_mask=mask)
    assert fused_calls["output_half"] == CONFIG["num_hidden_layers"]
    with pytest.raises(MinibertError, match="unknown fusion setting 'yes'; choose one of auto, on, off"):
        int8.fuse("yes")


@needs_compiler
def test_a_server_compiles_during_its_warm_up(tmp_path, fused_calls):
    """An int8 InferenceModel's warm-up runs (and so compiles) the fused regions before any request."""
    engine = InferenceModel.load(str(write_tiny_model(tmp_path / "tiny")), quantize="int8")
    engine.warm_up()
    assert fused_calls["projection"] > 0 and fused_calls["output_half"] > 0


def test_where_inductor_cannot_build_the_model_runs_eager(monkeypatch, caplog):
    """A compile failure (here: a C++ compiler that fails) is said once in the log; the forward that met it and
    every later one run eager and give the eager answer."""
    def failing(fn):
        def compiled_fn(*args):
            raise torch._dynamo.exc.BackendCompilerFailed("inductor", RuntimeError("g++ not found"), None)
        return compiled_fn
    monkeypatch.setattr(fusion, "_compile", failing)
    monkeypatch.setattr(fusion, "_broken", [])
    model = float_model()
    ids, mask, _ = padded_batch(CONFIG["vocab_size"], [9, 4])
    with torch.inference_mode(), caplog.at_level(logging.WARNING, logger="minibert"):
        eager = model(input_ids=ids, attention_mask=mask).last_hidden_state
        model.fuse("on")
        first, second = (model(input_ids=ids, attention_mask=mask).last_hidden_state for _ in range(2))
    assert torch.equal(first, eager) and torch.equal(second, eager)
    warnings = [r.getMessage() for r in caplog.records if "fused kernels are off" in r.getMessage()]
    assert len(warnings) == 1 and "g++ not found" in warnings[0], warnings
