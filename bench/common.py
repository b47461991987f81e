"""What the bench scripts share: data, the same model in both libraries, interleaved timing, tables and JSON.

Not a test and not part of the package: `python bench/<script>.py` from the repository root.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import random
import statistics
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a clean clone without installing

import transformers  # noqa: E402

import minibert  # noqa: E402
from minibert.config import BertConfig  # noqa: E402
from minibert.weights import load_hf_state_dict  # noqa: E402

SHARED = Path(os.environ.get("MINIBERT_SHARED", REPO.parent / "shared"))
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"
RESULTS = REPO / "bench" / "results"


def setup(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()


def machine() -> dict:
    return {"load_avg_1m": os.getloadavg()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


# --- data -------------------------------------------------------------------------------------------------------

def sst2(split: str = "dev", limit: int | None = None) -> list[str]:
    """SST-2 sentences in file order (TSV with a header, quoting off)."""
    with open(SHARED / "data" / "sst2" / f"{split}.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [r[0] for r in rows][:limit]


def imdb(n: int, seed: int = 0) -> list[str]:
    """A fixed random sample of n IMDB reviews (train.csv, text,label)."""
    csv.field_size_limit(1 << 30)
    with open(SHARED / "data" / "imdb" / "train.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r[0] for r in random.Random(seed).sample(rows, n)]


def batches(items: list, size: int) -> list[list]:
    return [items[i: i + size] for i in range(0, len(items), size)]


# --- models -----------------------------------------------------------------------------------------------------

def hf_config(name: str, **overrides) -> transformers.BertConfig:
    if name == "minilm":
        return transformers.BertConfig.from_pretrained(MINILM, **overrides)
    return transformers.BertConfig(**overrides)  # bert-base-uncased's shape, random weights


def pair(name: str, head: str = "BertForSequenceClassification", attn_impl: str = "auto", train: bool = False,
         **overrides) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same weights in transformers' and our `head`: MiniLM's real ones (plus a seeded random classifier), or
    a random bert-base. transformers runs its default attention (sdpa)."""
    torch.manual_seed(0)
    if name == "minilm":
        ref = getattr(transformers, head).from_pretrained(MINILM, **overrides)
    else:
        ref = getattr(transformers, head)(hf_config(name, **overrides))
    config_dict = ref.config.to_dict()
    ours_config = BertConfig(**{k: v for k, v in config_dict.items() if k in BertConfig.field_names()})
    ours = getattr(minibert, head)(ours_config, attn_impl=attn_impl)
    load_hf_state_dict(ours, ref.state_dict())
    return (ref.train(), ours.train()) if train else (ref.eval(), ours.eval())


def tokenizers(name: str):
    """Each library's own tokenizer, same vocabulary (bert-base has none here: MiniLM's is bert-base-uncased's)."""
    from minibert.tokenizer import BertTokenizer

    return transformers.BertTokenizer.from_pretrained(MINILM), BertTokenizer.from_pretrained(MINILM)


# --- timing -----------------------------------------------------------------------------------------------------

def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each fn `warmup` times, then `reps` rounds of all of them, the order rotating each round (so neither
    library always runs right after the other); returns the seconds of each call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for rep in range(reps):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            sync()
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median(xs: list[float]) -> float:
    return statistics.median(xs)


from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402


class PeakMemory(TorchDispatchMode):
    """Peak bytes of live tensor storage created inside the block (approximate: a storage counts until the first
    tensor that allocated it is freed). CPU has no allocator statistics like torch.cuda.max_memory_allocated."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_nested:
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and key not in self.seen:
                    self.seen.add(key)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, key, nbytes)
        return out


def peak_mb(fn) -> float:
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # the allocator knows: no need to track tensors
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        with PeakMemory() as mem:
            fn()
        return mem.peak / 2**20
    except Exception:  # nested tensors do not go through the dispatch mode
        return float("nan")


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def amp(dtype: str, device: str = "cpu"):
    return torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16")


# --- output -----------------------------------------------------------------------------------------------------

def table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of `columns` (floats with 3 significant digits)."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "argv": sys.argv, **payload}, indent=2))
    return path
