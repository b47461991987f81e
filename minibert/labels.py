"""Raw labels to tensors: the problem type (single-label, multi-label, regression) and the names of the classes.

Labels are compared by name, never by float(): "007" is its own class, not "7"; a missing value is an error.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from minibert.data import Examples
from minibert.errors import MinibertError

logger = logging.getLogger("minibert")

PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


def _number(value: Any) -> float | int | None:
    """An int or finite float if `value` reads as one (from a CSV string or JSON), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        for kind in (int, float):
            try:
                number = kind(value.strip())
            except ValueError:
                continue
            return number if math.isfinite(number) else None
    return None


def _name(value: Any) -> str:
    """A class name: text as written ("007" and "7" are two classes), numbers from JSON/parquet as integers when
    they are whole (1 and 1.0 are one class)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _name_order(name: str) -> tuple:
    number = _number(name)
    return (0, number, name) if number is not None else (1, 0, name)  # 0..10 in numeric order, then names


def _as_list(value: Any) -> list | None:
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, list) else None
    return None


@dataclass
class Labels:
    """How raw labels become tensors: the problem type and, for classification, the names of the ids."""

    problem_type: str
    names: list[str]

    @property
    def num_labels(self) -> int:
        return 1 if self.problem_type == "regression" else len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names)) if self.names else {0: "LABEL_0"}

    @classmethod
    def from_training(cls, labels: list[Any], problem_type: str | None = None,
                      names: list[str] | None = None) -> Labels:
        """Decide the problem type from the training labels (unless given) and name the classes in a stable order;
        `names` (from `--label-names`, applied by `name_labels`) fixes the classes and their ids."""
        if names is not None:
            return cls(problem_type or "single_label_classification", list(names))
        lists = [_as_list(v) for v in labels]
        if problem_type is None:
            if all(v is not None for v in lists):
                problem_type = "multi_label_classification"
            else:
                numbers = [_number(v) for v in labels]
                floats = all(n is not None for n in numbers) and any(
                    isinstance(n, float) and not n.is_integer() for n in numbers)
                problem_type = "regression" if floats else "single_label_classification"
        if problem_type == "regression":
            return cls(problem_type, [])
        if problem_type == "multi_label_classification":
            names = {_name(item) for items in lists for item in items or []}
        else:
            names = {_name(v) for v in labels}
            if len(names) == 1:
                logger.warning("the training data has a single class (%s): the model can only learn to predict it.",
                               next(iter(names)))
        return cls(problem_type, sorted(names, key=_name_order))

    @classmethod
    def from_config(cls, problem_type: str | None, id2label: dict[int, str]) -> Labels:
        names = [id2label[i] for i in sorted(id2label)]
        return cls(problem_type or ("regression" if len(names) == 1 else "single_label_classification"), names)

    def encode(self, examples: Examples, what: str) -> torch.Tensor:
        """Labels as a tensor (long ids, multi-hot floats or float targets); labels unknown to training are listed."""
        assert examples.labels is not None
        if self.problem_type == "regression":
            targets = []
            for value, (path, line) in zip(examples.labels, examples.sources):
                number = _number(value)
                if number is None:
                    raise MinibertError(f"line {line} of {path} has label {value!r}, not a number; regression needs "
                                        "numeric labels.")
                targets.append(float(number))
            return torch.tensor(targets, dtype=torch.float32)
        label2id = {name: i for i, name in enumerate(self.names)}
        unseen: dict[str, int] = {}
        if self.problem_type == "multi_label_classification":
            out = torch.zeros(len(examples), len(self.names))
            for row, (value, (_, line)) in enumerate(zip(examples.labels, examples.sources)):
                items = _as_list(value)
                if items is None:
                    raise MinibertError(f"line {line} of {examples.sources[row][0]} has label {value!r}, not a list; "
                                        "multi-label data needs a list of labels in every row.")
                for item in items:
                    if _name(item) in label2id:
                        out[row, label2id[_name(item)]] = 1.0
                    else:
                        unseen.setdefault(_name(item), line)
        else:
            ids = []
            for value, (_, line) in zip(examples.labels, examples.sources):
                ids.append(label2id.get(_name(value), -1))
                if ids[-1] < 0:
                    unseen.setdefault(_name(value), line)
            out = torch.tensor(ids, dtype=torch.long)
        if unseen:
            listed = ", ".join(f"{name!r} (line {line})" for name, line in list(unseen.items())[:5])
            raise MinibertError(f"the {what} data in {examples.sources[0][0]} has labels never seen in training: "
                                f"{listed}; the model knows only {', '.join(self.names)}.")
        return out


def parse_label_names(text: str) -> list[str]:
    """`--label-names negative,positive`: the names of classes 0, 1, ... in order, each once."""
    names = [name.strip() for name in text.split(",")]
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise MinibertError(f"--label-names {text!r} must list two or more different, non-empty names separated by "
                            "commas, class 0 first (for SST-2: negative,positive).")
    return names


def name_labels(examples: Examples, names: list[str]) -> Examples:
    """Integer labels 0..len(names)-1 replaced by their names (a label that is a name already is kept), so that the
    model's id2label says `negative` / `positive` instead of `0` / `1`; any other label is an error with its line."""
    assert examples.labels is not None
    named = []
    for value, (path, line) in zip(examples.labels, examples.sources):
        number = _number(value)
        if _name(value) in names:
            named.append(_name(value))
        elif isinstance(number, int) and 0 <= number < len(names):
            named.append(names[number])
        else:
            raise MinibertError(f"line {line} of {path} has label {value!r}; with --label-names every label must be "
                                f"a class id from 0 to {len(names) - 1} or one of the names {', '.join(names)}.")
    return Examples(examples.texts, examples.pairs, named, examples.sources)
