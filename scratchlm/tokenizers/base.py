"""What every tokenizer of the book shares: special tokens, id look-ups and JSON save/load.

Introduced in Chapter 02. A tokenizer maps text to a list of integer ids and back:
``encode: str -> list[int]`` and ``decode: list[int] -> str``. Special tokens ([CLS], [SEP], [MASK],
<pad>, ...) are whole vocabulary entries that never come out of ordinary text splitting; each has a
*role* (``pad``, ``unk``, ``cls``, ``sep``, ``mask``, ``bos``, ``eos``) exposed as ``pad_id`` etc.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# Roles a special token can play, and the spellings that imply each role when only strings are given.
SPECIAL_ROLES: tuple[str, ...] = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
_ROLE_BY_SPELLING: dict[str, str] = {
    "<pad>": "pad", "[PAD]": "pad", "<|pad|>": "pad",
    "<unk>": "unk", "[UNK]": "unk", "<|unk|>": "unk",
    "<cls>": "cls", "[CLS]": "cls",
    "<sep>": "sep", "[SEP]": "sep",
    "<mask>": "mask", "[MASK]": "mask",
    "<bos>": "bos", "<s>": "bos", "<|startoftext|>": "bos",
    "<eos>": "eos", "</s>": "eos", "<|endoftext|>": "eos",
}  # fmt: skip


def normalize_special_tokens(special_tokens: Sequence[str] | Mapping[str, str] | None) -> dict[str, str | None]:
    """Turn ``["<pad>", "[MASK]"]`` or ``{"pad": "<pad>"}`` into an ordered ``{token: role-or-None}``.

    A plain list infers each token's role from its spelling (``<pad>``/``[PAD]`` -> ``pad``, ...);
    a token with an unknown spelling is still special but has no role. A mapping names roles
    explicitly (role -> token).
    """
    if special_tokens is None:
        return {}
    if isinstance(special_tokens, str):
        raise TypeError(
            f"special_tokens must be a list of strings or a role -> token mapping, not a single string "
            f"({special_tokens!r}); wrap it in a list"
        )
    result: dict[str, str | None] = {}
    if isinstance(special_tokens, Mapping):
        for role, token in special_tokens.items():
            if role not in SPECIAL_ROLES:
                raise ValueError(f"unknown special-token role {role!r}; expected one of {SPECIAL_ROLES}")
            _check_token_string(token)
            if token in result:
                raise ValueError(f"special token {token!r} is listed twice")
            result[token] = role
        return result
    if not isinstance(special_tokens, Iterable):
        raise TypeError(f"special_tokens must be a list or a mapping; got {type(special_tokens).__name__}")
    roles_seen: set[str] = set()
    for token in special_tokens:
        _check_token_string(token)
        if token in result:
            raise ValueError(f"special token {token!r} is listed twice")
        role = _ROLE_BY_SPELLING.get(token)
        if role in roles_seen:
            role = None  # a second spelling of the same role stays special but role-less
        if role is not None:
            roles_seen.add(role)
        result[token] = role
    return result


def _check_token_string(token: Any) -> None:
    if not isinstance(token, str):
        raise TypeError(f"a special token must be a str; got {type(token).__name__} {token!r}")
    if not token:
        raise ValueError("a special token must be a non-empty string")


def check_ids(ids: Any, vocab_size: int) -> list[int]:
    """Validate a decode input: a sequence (or 1-D tensor/array) of ints in ``[0, vocab_size)``."""
    if hasattr(ids, "tolist") and not isinstance(ids, list):  # torch tensor / numpy array
        if getattr(ids, "ndim", 1) != 1:
            raise ValueError(f"decode expects a 1-D sequence of ids; got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TypeError(f"decode expects a sequence of int ids; got {type(ids).__name__}")
    out = list(ids)
    for i in out:
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"token ids must be ints; got {type(i).__name__} {i!r}")
        if not 0 <= i < vocab_size:
            raise ValueError(f"token id {i} is out of range for a vocabulary of {vocab_size}")
    return out


def check_text(text: Any, what: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str; got {type(text).__name__}")
    return text


class Tokenizer:
    """Base class: vocabulary look-ups, special-token ids and JSON persistence.

    Subclasses set ``self._specials`` (token -> role) and implement ``encode``/``decode``,
    ``vocab_size``, ``token_to_id``/``id_to_token`` and ``_to_json``/``_from_json``.
    """

    kind: str = "base"  # written into the JSON file so ``load`` can check it reads the right kind
    _specials: dict[str, str | None]

    # --- vocabulary -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def id_to_token(self, index: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def tokenize(self, text: str) -> list[str]:
        """The token strings ``encode`` would produce (for display)."""
        return [self.id_to_token(i) for i in self.encode(text)]

    # --- special tokens ---------------------------------------------------------------------------
    @property
    def special_tokens(self) -> list[str]:
        """All special token strings, in vocabulary order."""
        return list(self._specials)

    @property
    def special_ids(self) -> set[int]:
        return {self.token_to_id(t) for t in self._specials}

    def _role_id(self, role: str) -> int | None:
        for token, r in self._specials.items():
            if r == role:
                return self.token_to_id(token)
        return None

    @property
    def pad_id(self) -> int | None:
        """Id of the padding token, or None if this tokenizer has none."""
        return self._role_id("pad")

    @property
    def unk_id(self) -> int | None:
        """Id of the unknown token, or None if this tokenizer has none."""
        return self._role_id("unk")

    @property
    def cls_id(self) -> int | None:
        """Id of [CLS] (start of a classification input), or None."""
        return self._role_id("cls")

    @property
    def sep_id(self) -> int | None:
        """Id of [SEP] (end of a segment), or None."""
        return self._role_id("sep")

    @property
    def mask_id(self) -> int | None:
        """Id of [MASK] (the masked-LM placeholder), or None."""
        return self._role_id("mask")

    @property
    def bos_id(self) -> int | None:
        return self._role_id("bos")

    @property
    def eos_id(self) -> int | None:
        return self._role_id("eos")

    # --- persistence ------------------------------------------------------------------------------
    def _to_json(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def _from_json(cls, data: dict[str, Any]):  # pragma: no cover - abstract
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as UTF-8 JSON (human-readable, safe to load: no pickle)."""
        path = Path(path)
        payload = {"kind": self.kind, "format_version": 1, **self._to_json()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path):
        """Read a tokenizer written by :meth:`save` (of the same class)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not a JSON tokenizer file: {err}") from err
        if not isinstance(data, dict) or data.get("kind") != cls.kind:
            found = data.get("kind") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path} holds a {found!r} tokenizer; expected kind {cls.kind!r}")
        return cls._from_json(data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, special_tokens={self.special_tokens})"
