"""Condition vocabularies (e.g. ACDC group x phase) as one class index for the denoiser's class embedding.

Each condition key gets its values plus a "null" slot; the index is the mixed-radix number of the slots. So one
embedding table serves any subset of keys: dropping a key (classifier-free guidance) or leaving it out at
generation time both select its null slot, and dropping every key gives the unconditional index.
"""

from __future__ import annotations

import math

from CTDiffusionLib.errors import InputError


class ConditionVocabulary:
    def __init__(self, vocab: dict[str, list[str]] | None):
        self.vocab = {k: sorted(set(map(str, v))) for k, v in (vocab or {}).items()}

    @classmethod
    def from_conditions(cls, keys: list[str], conditions: list[dict]) -> "ConditionVocabulary":
        vocab = {}
        for key in keys:
            values = {c.get(key) for c in conditions}
            if None in values:
                raise InputError(f"Some cases have no value for condition {key!r}.",
                                 "Give every case that condition (Info.cfg or the CSV), or train without it.")
            vocab[key] = sorted(map(str, values))
        return cls(vocab)

    def __bool__(self) -> bool:
        return bool(self.vocab)

    @property
    def keys(self) -> list[str]:
        return list(self.vocab)

    @property
    def num_embeddings(self) -> int:
        return math.prod(len(v) + 1 for v in self.vocab.values()) if self.vocab else 0

    def encode(self, condition: dict | None) -> int:
        """Condition dict -> class index; missing keys take their null slot; unknown keys/values are errors."""
        condition = dict(condition or {})
        if condition and not self.vocab:
            raise InputError("This model was trained without conditions, so --condition cannot be used.",
                             "Drop --condition, or train a model with --conditions.")
        unknown = set(condition) - set(self.vocab)
        if unknown:
            known = ", ".join(self.vocab) or "none (this model is unconditional)"
            raise InputError(f"Unknown condition {', '.join(sorted(unknown))}.", f"Known conditions: {known}.")
        index, stride = 0, 1
        for key, values in self.vocab.items():
            value = condition.get(key)
            if value is None:
                slot = len(values)
            elif str(value) in values:
                slot = values.index(str(value))
            else:
                raise InputError(f"Unknown value {value!r} for condition {key!r}.",
                                 f"Known values: {', '.join(values)}.")
            index += slot * stride
            stride *= len(values) + 1
        return index

    @property
    def null_index(self) -> int:
        return self.encode({})

    def to_dict(self) -> dict[str, list[str]]:
        return dict(self.vocab)


def parse_condition_text(text: str | None) -> dict:
    """'group=DCM,phase=ED' -> {'group': 'DCM', 'phase': 'ED'}."""
    if not text:
        return {}
    result = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InputError(f"--condition {text!r} is not a list of key=value pairs.",
                             "Write it like group=DCM,phase=ED.")
        result[key.strip()] = value.strip()
    return result
