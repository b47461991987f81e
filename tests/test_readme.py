"""The README's Python snippet runs as written (with the Hub id pointed at the local MiniLM folder)."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_readme_snippet_runs(minilm_dir, tmp_path) -> None:
    text = (REPO / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "labels = " in snippet and "sentence-transformers/all-MiniLM-L6-v2" in snippet
    snippet = snippet.replace('"sentence-transformers/all-MiniLM-L6-v2"', repr(str(minilm_dir)))
    snippet += "\nassert out.loss.item() > 0 and out.logits.shape == (2, 2)\n"
    snippet += "import transformers\ntransformers.BertForSequenceClassification.from_pretrained('weights/run1')\n"
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "weights" / "run1" / "model.safetensors").is_file()
