"""Prompts of an embedding model, as sentence-transformers defines them: named texts put before every input
(`"query": "query: "`), from `config_sentence_transformers.json`'s `prompts` and `default_prompt_name`.

The default prompt applies when a call names none; `prompt=` (a text) wins over `prompt_name=`. Whether the
prompt's tokens count in the pooled vector is the pooling's `include_prompt` (`minibert.pooling`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from minibert.errors import MinibertError
from minibert.st_files import st_dict

logger = logging.getLogger("minibert")


@dataclass
class Prompts:
    prompts: dict[str, str] = field(default_factory=dict)
    default_name: str | None = None

    def resolve(self, prompt: str | None = None, prompt_name: str | None = None) -> str | None:
        """The text to put before each input, by sentence-transformers' rules (None: no prompt)."""
        if prompt is not None:
            if prompt_name is not None:
                logger.warning("both a prompt and a prompt name were given; using the prompt.")
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                known = ", ".join(self.prompts) or "none"
                raise MinibertError(f"prompt name {prompt_name!r} is not one of this model's prompts ({known}).")
            return self.prompts[prompt_name]
        return self.prompts.get(self.default_name) if self.default_name is not None else None


def read_prompts(where: Path | str, revision: str | None = None) -> Prompts:
    """The prompts of a sentence-transformers folder or Hub repo (none when it has no such file)."""
    config = st_dict(where, "config_sentence_transformers.json", revision)
    prompts, default = config.get("prompts") or {}, config.get("default_prompt_name")
    if not isinstance(prompts, dict) or not all(isinstance(v, (str, type(None))) for v in prompts.values()):
        raise MinibertError(f"config_sentence_transformers.json of {where} has prompts that are not a mapping from "
                            "names to texts.")
    prompts = {str(name): text or "" for name, text in prompts.items()}  # sentence-transformers reads None as ""
    if default is not None and default not in prompts:
        raise MinibertError(f"config_sentence_transformers.json of {where} names the default prompt {default!r}, "
                            f"which is not one of its prompts ({', '.join(prompts) or 'none'}).")
    return Prompts(prompts, default)
