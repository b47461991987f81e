"""bench/README.md's tables are generated from bench/results/*.json: a result committed without regenerating them,
or a hand edit inside a generated block, fails here."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_readme_matches_the_recorded_results() -> None:
    proc = subprocess.run([sys.executable, "bench/report.py", "--check"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
