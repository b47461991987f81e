"""What the bench scripts share: data, the same model in both libraries, interleaved timing, the bf16 gate, and the
record of a run (`Run`: each row printed as it is measured, all of them written with the machine, the commit and the
command to `bench/results/<script>-<UTC time>.json`, from which `report.py` writes bench/README.md's tables).

Not a test and not part of the package: `python bench/<script>.py` from the repository root.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a clean clone without installing

import transformers  # noqa: E402
from mdtable import header_lines, row_line, table  # noqa: E402, F401 (table: for the scripts)

import minibert  # noqa: E402
from minibert.config import BertConfig  # noqa: E402
from minibert.devices import cpu_has_bf16  # noqa: E402
from minibert.train import TrainOptions, param_groups  # noqa: E402
from minibert.weights import load_hf_state_dict  # noqa: E402

SHARED = Path(os.environ.get("MINIBERT_SHARED", REPO.parent / "shared"))
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"
RESULTS = Path(os.environ.get("MINIBERT_BENCH_RESULTS", REPO / "bench" / "results"))  # tests write elsewhere


def setup(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()


# --- the machine, the commit, the command ---------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The /proc/cpuinfo flags that decide the speed of fp32, bf16 and int8 here (vector width, native bf16, VNNI,
    AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8",
              "amx_tile")
    return [f for f in wanted if f in flags]


def native_bf16(device: str = "cpu") -> bool:
    """Whether bf16 runs natively: a GPU with bf16, or a CPU with AVX512-BF16 or AMX (`minibert.devices.cpu_has_bf16`,
    what `precision="auto"` asks). Elsewhere torch emulates bf16 on the CPU, ~5x slower than fp32 on AVX2 only."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


# what limits the instruction sets torch's kernels, oneDNN and MKL use below what the CPU has (an AVX512 machine run
# as AVX2-only: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2)
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def machine(device: str = "cpu") -> dict:
    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_flags": cpu_flags(),
            "isa_limits": {name: os.environ[name] for name in ISA_LIMITS if name in os.environ},
            "native_bf16": native_bf16(device), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def git_state() -> dict:
    """The checkout's short commit, the tracked files that differ from it, and whether any of them is code (the
    numbers then belong to no commit; Markdown and bench/results/ do not count: report.py rewrites the README)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        subject = git("log", "-1", "--format=%s (authored %aI)").strip()  # finds the commit again after a rebase
        changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "commit_subject": None, "dirty": None, "changed": None}
    code = [f for f in changed if not f.endswith(".md") and not f.startswith("bench/results/")]
    return {"commit": commit, "commit_subject": subject, "dirty": bool(code), "changed": changed}


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every script shares: --bf16 (run bf16 rows on a CPU without native bf16) and --no-save."""
    parser.add_argument("--bf16", action="store_true", help="run the bf16 rows even on a CPU without native bf16 "
                        "(emulated there: slow, and not what precision/attn_impl 'auto' picks)")
    parser.add_argument("--no-save", action="store_true", help="print only; write no JSON to bench/results/")


def bf16_allowed(args: argparse.Namespace, what: str = "the bf16 rows") -> bool:
    """True where bf16 is native or --bf16 asks for it; otherwise says why `what` is skipped."""
    device = getattr(args, "device", "cpu")
    if args.bf16 or native_bf16(device):
        return True
    print(f"skipping {what}: this CPU ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()}) has no native bf16 "
          "(AVX512-BF16 or AMX), so torch emulates it, several times slower than fp32, and minibert's `auto` stays "
          "in fp32 here; --bf16 runs them anyway", flush=True)
    return False


def dtypes_to_run(dtypes: str, args: argparse.Namespace) -> list[str]:
    """The comma-separated `dtypes` less bf16 where `bf16_allowed` says no."""
    wanted = dtypes.split(",")
    if "bf16" in wanted and not bf16_allowed(args):
        wanted.remove("bf16")
    return wanted


def utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def strict_json(value: object) -> object:
    """`value` with NaN and infinities as null, which JSON (unlike Python's json module) has no number for."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


class Run:
    """One run of a bench script. `add` prints a row the moment it is measured and rewrites the run's JSON (marked
    incomplete until `finish`, so a run cut short leaves its rows behind but `report.py` does not publish them)."""

    def __init__(self, script: str, args: argparse.Namespace) -> None:
        self.script, self.args = script, args
        self.started = time.time()
        self.rows: list[dict] = []
        self.columns: list[str] | None = None
        self.machine = machine(getattr(args, "device", "cpu"))
        self.git = git_state()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.started))
        self.path = None if args.no_save else RESULTS / f"{script}-{stamp}.json"
        m = self.machine
        threads = f"{m['threads']} thread" + ("s" if m["threads"] != 1 else "")
        print(f"{script}: {m['cpu']} ({m['cpu_capability']}, native bf16: {'yes' if m['native_bf16'] else 'no'}), "
              f"{threads}, load {m['load_avg_1m']}, torch {m['torch']}, commit {self.git['commit']}"
              f"{' (dirty)' if self.git['dirty'] else ''}", flush=True)

    def add(self, row: dict, columns: list[str]) -> dict:
        """Record `row`, print it as a markdown table row (under a header when `columns` change)."""
        self.rows.append(row)
        if columns != self.columns:
            print("\n" + "\n".join(header_lines(columns)), flush=True)
            self.columns = columns
        print(row_line([row.get(c, "") for c in columns]), flush=True)
        self.save(complete=False)
        return row

    def save(self, complete: bool = True, **extra) -> Path | None:
        if self.path is None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        command = shlex.join(["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
        payload = {"script": self.script, "command": command, "argv": sys.argv, "args": vars(self.args),
                   **self.git, "started_utc": utc(self.started), "finished_utc": utc(time.time()) if complete else None,
                   "complete": complete, "machine": self.machine, "load_avg_1m_end": round(os.getloadavg()[0], 2),
                   **extra, "rows": self.rows}
        self.path.write_text(json.dumps(strict_json(payload), indent=1, allow_nan=False, default=str) + "\n")
        return self.path

    def finish(self, **extra) -> None:
        """Write the complete record (with `extra`: what the rows alone do not say) and say where."""
        path = self.save(complete=True, **extra)
        print(f"wrote {os.path.relpath(path, REPO)}" if path else "not saved (--no-save)", flush=True)


# --- data -------------------------------------------------------------------------------------------------------

def sst2(split: str = "dev", limit: int | None = None) -> list[str]:
    """SST-2 sentences in file order (TSV with a header, quoting off)."""
    with open(SHARED / "data" / "sst2" / f"{split}.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [r[0] for r in rows][:limit]


def sst2_labels(split: str = "dev", limit: int | None = None) -> list[int]:
    """The labels of `sst2(split, limit)`, in the same order."""
    with open(SHARED / "data" / "sst2" / f"{split}.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [int(r[1]) for r in rows][:limit]


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


def adamw(model: torch.nn.Module, lr: float) -> torch.optim.AdamW:
    """The optimizer of `minibert.train`'s step: fused AdamW over its parameter groups (weight decay at its default on
    matrices and embeddings, none on biases and LayerNorm weights), for either library's model."""
    return torch.optim.AdamW(param_groups(model, TrainOptions.weight_decay), lr=lr, fused=True)


def amp(dtype: str, device: str = "cpu"):
    return torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16")


def write_json(name: str, payload: dict) -> Path | None:
    """For a script not (yet) on `Run`: one complete record of `payload`, whose "rows" are the rows."""
    run = Run(name, argparse.Namespace(no_save=False))
    run.rows = payload.pop("rows", [])
    return run.save(**payload)
