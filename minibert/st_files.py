"""The small JSON files sentence-transformers keeps beside a model (`config_sentence_transformers.json`,
`sentence_bert_config.json`, `modules.json`), read from a local folder or a Hub repo; a missing file is None."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from minibert.errors import MinibertError
from minibert.files import atomic_write_text
from minibert.hub import hub_file


def st_json(where: Path | str, name: str, revision: str | None = None) -> Any:
    """The parsed file `name` of folder (Path) or Hub repo id (str) `where`, or None when there is none."""
    path = where / name if isinstance(where, Path) else hub_file(where, name, revision, None, required=False)
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MinibertError(f"{path} is not readable JSON ({e}); it should be the {name} that sentence-transformers "
                            "wrote.") from None


def st_dict(where: Path | str, name: str, revision: str | None = None) -> dict[str, Any]:
    """`st_json` for a file that must hold a JSON object ({} when absent)."""
    value = st_json(where, name, revision)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MinibertError(f"{name} of {where} holds a {type(value).__name__}, not the JSON object "
                            "sentence-transformers writes there.")
    return value


def write_cross_encoder_files(folder: Path, max_length: int) -> None:
    """What sentence-transformers 6 writes beside a CrossEncoder's weights, so that `CrossEncoder(folder)` loads
    a minibert-trained reranker with its sigmoid and reads pairs up to the `max_length` it was trained at."""
    files = {
        "modules.json": [{"idx": 0, "name": "0", "path": "",
                          "type": "sentence_transformers.base.modules.transformer.Transformer"}],
        "sentence_bert_config.json": {"transformer_task": "sequence-classification",
                                      "modality_config": {"text": {"method": "forward",
                                                                   "method_output_name": "logits"}},
                                      "module_output_name": "scores", "max_seq_length": max_length},
        "config_sentence_transformers.json": {"model_type": "CrossEncoder", "prompts": {}, "default_prompt_name": None,
                                              "activation_fn": "torch.nn.modules.activation.Sigmoid"},
    }
    for name, value in files.items():
        atomic_write_text(folder / name, json.dumps(value, indent=2) + "\n")
