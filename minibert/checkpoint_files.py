"""Finding and reading Hugging Face checkpoint files: a local folder or a Hub id, shards, impostors, the two formats.

Reading: a local folder, or a Hub id resolved with `huggingface_hub` (only the files needed; the HF cache,
`revision` and `HF_HUB_OFFLINE` honoured). `model.safetensors` (or sharded `*.safetensors` with an index) is
preferred; `pytorch_model.bin` is read with `torch.load(weights_only=True)` only, so a pickle cannot run code.
A safetensors header (names and shapes, no data) can be read alone, to check a config before building a model.
Which tensor goes where is `weights.py`'s business.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from minibert.errors import MinibertError
from minibert.files import atomic_write_text, atomic_write_with
from minibert.hub import hub_errors, hub_file, local_folder_or_repo_id

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PYTORCH_FILE = "pytorch_model.bin"

@dataclass
class CheckpointFiles:
    config_file: Path
    weight_files: list[Path]


def _weights_in_folder(folder: Path) -> list[Path] | None:
    if (folder / SAFETENSORS_FILE).is_file():
        return [folder / SAFETENSORS_FILE]
    if (folder / SAFETENSORS_INDEX_FILE).is_file():
        return [folder / name for name in _shard_names(folder / SAFETENSORS_INDEX_FILE)]
    if (folder / PYTORCH_FILE).is_file():
        return [folder / PYTORCH_FILE]
    return None


def _shard_names(index_file: Path) -> list[str]:
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        return sorted(set(index["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError, UnicodeDecodeError):
        raise MinibertError(f"{index_file} is not a valid safetensors index (it needs a 'weight_map').") from None


def resolve_checkpoint(
    name_or_path: str | os.PathLike, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> CheckpointFiles:
    """A local folder, or else a Hub repo id: find config.json and the weight files, downloading only those."""
    where = local_folder_or_repo_id(name_or_path, "config.json and the weights")
    if isinstance(where, Path):
        files = _weights_in_folder(where)
        if files is None:
            raise MinibertError(f"{where} has no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or {PYTORCH_FILE}; "
                                "point to the folder that holds the model's weights.")
        return CheckpointFiles(where / CONFIG_FILE, files)
    return _resolve_from_hub(where, revision, cache_dir)


def _resolve_from_hub(repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None) -> CheckpointFiles:
    with hub_errors(repo_id, revision):
        config = hub_file(repo_id, CONFIG_FILE, revision, cache_dir, required=True)
        if config is None:
            raise MinibertError(f"Hub repo {repo_id!r} has no {CONFIG_FILE}; it is not a transformers model.")
        for name in (SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE, PYTORCH_FILE):
            found = hub_file(repo_id, name, revision, cache_dir, required=False)
            if found is None:
                continue
            if name == SAFETENSORS_INDEX_FILE:
                shards = [hub_file(repo_id, shard, revision, cache_dir, required=False) or found.parent / shard
                          for shard in _shard_names(found)]
                return CheckpointFiles(config, shards)
            return CheckpointFiles(config, [found])
    raise MinibertError(f"Hub repo {repo_id!r} has no {SAFETENSORS_FILE} or {PYTORCH_FILE} (or they are not in the "
                        "cache while offline).")


def _sniff(path: Path) -> str | None:
    """What a file that should be weights really is, when it is a well-known impostor."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights: fetch the real file (git lfs pull)"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a failed download?), not the weights: download the file again"
    if len(head) == 0:
        return "empty: download the file again"
    return None


def read_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    """All tensors of the weight files, by their names in the file."""
    state: dict[str, torch.Tensor] = {}
    for path in files:
        if not path.is_file():
            raise MinibertError(f"weight file {path} is missing (listed in the shard index); download it again.")
        impostor = _sniff(path)
        if impostor:
            raise MinibertError(f"{path} is {impostor}.")
        part = _read_safetensors(path) if path.suffix == ".safetensors" else _read_pytorch_bin(path)
        overlap = state.keys() & part.keys()
        if overlap:
            raise MinibertError(f"tensor {sorted(overlap)[0]!r} appears in two shards; the index is inconsistent.")
        state.update(part)
    return state


def read_shapes(files: list[Path]) -> dict[str, tuple[int, ...]] | None:
    """Every tensor's name and shape from the safetensors headers, without reading any tensor data; None for a
    `pytorch_model.bin`, whose shapes are only known once it is unpickled."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        if path.suffix != ".safetensors":
            return None
        if not path.is_file():
            raise MinibertError(f"weight file {path} is missing (listed in the shard index); download it again.")
        impostor = _sniff(path)
        if impostor:
            raise MinibertError(f"{path} is {impostor}.")
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        except (SafetensorError, OSError, ValueError) as e:
            raise MinibertError(f"{path} is not a valid safetensors file ({e}); it is truncated or corrupt, "
                                "download it again.") from None
    return shapes


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise MinibertError(f"{path} is not a valid safetensors file ({e}); it is truncated or corrupt, "
                            "download it again.") from None


def _read_pytorch_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise MinibertError(f"{path} was refused: its pickle asks to run code or build objects that are not "
                            f"tensors ({str(e).splitlines()[0][:200]}); convert it to safetensors from a trusted "
                            "source.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise MinibertError(f"{path} is not a readable PyTorch checkpoint ({e}); it is truncated or corrupt.") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise MinibertError(f"{path} does not hold a plain state dict of tensors.")
    return state


def save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    # "format": "pt" is the metadata transformers checks for when it loads a safetensors file
    atomic_write_with(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))


def save_config(config: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
