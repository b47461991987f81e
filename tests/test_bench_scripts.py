"""The benchmark scripts start and finish the way a user runs them: `python bench/NAME.py ...` from the repo root.

Running a script puts bench/ first on `sys.path`, so a bench module named like an installed package answers for it:
`bench/kernels.py` once shadowed Hugging Face's `kernels`, which transformers 5.25 imports with its BERT (issue 27).
By default: the names, and one interpreter that imports every bench module the way a script sees them (a few
seconds). With --runslow: each script's quickest real run in its own subprocess (3-25 s each on one thread).
"""

import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
MODULES = sorted(p.stem for p in BENCH.glob("*.py"))
LIBRARIES = ("common", "mdtable", "onnx_engine")  # imported by the scripts, never run


def transformers_probes() -> set[str]:
    """The package names transformers looks for (`_is_package_available("x")`, `find_spec("x")`): one of ours
    among them would be found, and imported, in place of the real one."""
    import transformers

    root = Path(transformers.__file__).parent
    found: set[str] = set()
    for path in [root / "utils" / "import_utils.py", *sorted((root / "integrations").glob("*.py"))]:
        found |= set(re.findall(r'(?:_is_package_available|find_spec)\(\s*"([\w.]+)"', path.read_text()))
    return {name.split(".")[0] for name in found}


def test_transformers_probes_are_found() -> None:
    """The scan above reads what it should (else the next test would pass by finding nothing)."""
    assert {"kernels", "torch", "accelerate", "onnxruntime"} <= transformers_probes()


def test_no_bench_module_shadows_a_package() -> None:
    elsewhere = [p for p in sys.path if p and Path(p).resolve() not in (BENCH, REPO)]
    installed = {m.name for m in pkgutil.iter_modules(elsewhere)}
    taken = installed | transformers_probes() | set(sys.stdlib_module_names)
    assert not set(MODULES) & taken, f"bench modules named like a package: {sorted(set(MODULES) & taken)}"


def run(args: list[str], tmp_path: Path, timeout: float = 120) -> str:
    """`python ARGS` from the repo root with one thread, this checkout's minibert, and results written to tmp_path;
    the script's directory comes first on sys.path, as for a user."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MINIBERT_BENCH_RESULTS": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"python {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_every_bench_module_imports_as_a_script_sees_it(tmp_path: Path) -> None:
    """One interpreter with bench/ first on sys.path imports each module, then transformers' BERT (which imports
    `kernels`, `accelerate`, ... if it finds them): what every script does before it parses its flags."""
    code = (f"import sys; sys.path.insert(0, {str(BENCH)!r})\n"
            f"for name in {MODULES!r}: __import__(name)\n"
            "from transformers import BertModel\n"
            "print('ok')")
    assert run(["-c", code], tmp_path).strip().endswith("ok")


def test_report_check(tmp_path: Path) -> None:
    """bench/README.md's generated tables are what bench/results holds (the renamed records included)."""
    run(["bench/report.py", "--check"], tmp_path)


SHARED = Path(os.environ.get("MINIBERT_SHARED", REPO.parent / "shared"))
MINILM, SST2 = SHARED / "models" / "all-MiniLM-L6-v2", SHARED / "data" / "sst2"
# Each script's quickest run: one thread, one repetition, a few sentences, fp32 only (seconds on one core).
QUICK = {
    "attention_kernels": ["--quick", "--threads", "1", "--reps", "1", "--dtypes", "fp32", "--only", "qkv,encoder",
                          "--no-save"],
    "finetune_transformers": ["--model", str(MINILM), "--train-file", str(SST2 / "train.tsv"), "--validation-file",
                              "{tmp}/dev.tsv", "--max-train-samples", "16", "--epochs", "1", "--batch-size", "8",
                              "--output-dir", "{tmp}/run"],
    "fused_layers": ["--batches", "2x8", "--train-tokens", "16", "--reps", "1", "--threads", "1", "--no-save"],
    "inference": ["--quick", "--threads", "1", "--models", "minilm", "--dtypes", "fp32", "--no-save"],
    "int8_matmuls": ["--classifier", str(MINILM), "--limit", "16", "--threads", "1", "--no-save"],
    "long_text": ["--docs", "1", "--batch-docs", "1", "--dtypes", "fp32", "--modes", "predict", "--threads", "1",
                  "--reps", "1", "--no-save"],
    "pretrain": ["--quick", "--dtypes", "fp32", "--batch-size", "2", "--max-length", "32", "--reviews", "4", "--reps",
                 "1", "--threads", "1"],
    "report": ["--check"],
    "roofline": ["--quick", "--threads", "1", "--reps", "1", "--batch", "1", "--seq", "16", "--no-save"],
    "serve": ["--servers", "minibert", "--data", "sst2", "--clients", "1", "--seconds", "1", "--threads", "1"],
    "tokenizer": ["--limit", "20", "--workers", "1", "--output", "{tmp}/tokenizer.json"],
    "train": ["--quick", "--threads", "1", "--dtypes", "fp32", "--steps", "1", "--reps", "1", "--batch", "4",
              "--order", "grouped", "--no-save"],
}


def test_every_script_has_a_quick_run() -> None:
    assert sorted(QUICK) == sorted(set(MODULES) - set(LIBRARIES))


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(QUICK))
def test_script_help(script: str, tmp_path: Path) -> None:
    assert "usage:" in run([f"bench/{script}.py", "--help"], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(QUICK))
def test_script_quick_run(script: str, tmp_path: Path, minilm_dir: Path) -> None:
    """The whole script, as a user types it; its records land in tmp_path, not bench/results."""
    (tmp_path / "dev.tsv").write_text("".join((SST2 / "dev.tsv").open().readlines()[:17]))
    run([f"bench/{script}.py", *(a.format(tmp=tmp_path) for a in QUICK[script])], tmp_path, timeout=300)
