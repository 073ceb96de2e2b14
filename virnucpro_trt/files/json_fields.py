"""Reading back JSON the tool wrote earlier, as hostile input: bounded in size, every field typed.

A file under ``OUTDIR/.work`` (a shard's done-marker, the worker facts) may have been cut short by a
kill, edited by hand or replaced. Reading one either gives typed values or raises :class:`FieldError`
naming the field, which the caller turns into "redo that work"; never a ``KeyError`` or ``TypeError``
from deep inside a merge. JSON's ``NaN``/``Infinity`` extensions are refused wherever a number is read.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from virnucpro_trt.files.bounded_read import FileTooLarge, read_bounded

SHA256 = re.compile(r"[0-9a-f]{64}")


class FieldError(ValueError):
    """A JSON file, or one of its fields, is not what the tool writes there."""


def parse_json(raw: str | bytes) -> Any:
    """``json.loads`` for files read as hostile: every way the text can be wrong is a ``ValueError``
    (invalid JSON, an integer of more digits than Python converts, and nesting deep enough to exhaust
    the parser's recursion, which is otherwise a ``RecursionError`` that no caller expects)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_json_object(path: Path, max_bytes: int) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`FieldError` if it is larger than ``max_bytes``, not JSON or
    not an object (``OSError`` when it cannot be read at all)."""
    try:
        raw = read_bounded(path, max_bytes)
    except FileTooLarge as exc:
        raise FieldError(str(exc)) from None
    try:
        data = parse_json(raw)
    except ValueError:
        raise FieldError("not JSON") from None
    return obj(data, "the file")


def obj(value: Any, where: str, keys: Collection[str] | None = None) -> dict[str, Any]:
    """``value`` as a JSON object; with ``keys``, holding exactly those keys."""
    if not isinstance(value, dict):
        raise FieldError(f"{where}: not an object")
    if keys is not None and set(value) != set(keys):
        extra, missing = sorted(set(value) - set(keys)), sorted(set(keys) - set(value))
        raise FieldError(f"{where}: unexpected keys {extra}, missing {missing}")
    return value


def count(data: dict[str, Any], key: str, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer >= ``minimum`` and, when given, <= ``maximum`` (``true``/``false`` are not integers)."""
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise FieldError(f"{key}: not an integer >= {minimum}")
    if maximum is not None and value > maximum:
        raise FieldError(f"{key}: not an integer from {minimum} to {maximum}")
    return value


def finite_number(value: Any) -> bool:
    """Whether ``value`` is a JSON number a float holds: not ``true``/``false``, not NaN or Infinity, and
    not an integer past any float (10**400: ``math.isfinite`` raises OverflowError on it, and so would
    every sum or rounding of it further on)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def number(data: dict[str, Any], key: str, minimum: float = -math.inf) -> float:
    """A finite number >= ``minimum``."""
    value = data.get(key)
    if not finite_number(value):
        raise FieldError(f"{key}: not a finite number")
    if value < minimum:
        raise FieldError(f"{key}: below {minimum}")
    return float(value)


def seconds(data: dict[str, Any], key: str) -> float:
    """A finite number >= 0."""
    return number(data, key, 0.0)


def text(
    data: dict[str, Any], key: str, pattern: re.Pattern[str] | None = None, max_chars: int | None = None
) -> str:
    """A string (matching ``pattern`` whole, when given; of at most ``max_chars`` characters, when given)."""
    value = data.get(key)
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        raise FieldError(f"{key}: not {'a SHA-256' if pattern is SHA256 else 'a string'}")
    if max_chars is not None and len(value) > max_chars:
        raise FieldError(f"{key}: a string of {len(value)} characters, more than {max_chars}")
    return value


def texts(data: dict[str, Any], key: str, max_items: int, max_chars: int) -> tuple[str, ...]:
    """A list of at most ``max_items`` strings of at most ``max_chars`` characters each."""
    value = data.get(key)
    if not isinstance(value, list) or len(value) > max_items:
        raise FieldError(f"{key}: not a list of at most {max_items} strings")
    for index, item in enumerate(value):
        if not isinstance(item, str) or len(item) > max_chars:
            raise FieldError(f"{key}[{index}]: not a string of at most {max_chars} characters")
    return tuple(value)


def flag(data: dict[str, Any], key: str) -> bool:
    """``true`` or ``false``."""
    value = data.get(key)
    if not isinstance(value, bool):
        raise FieldError(f"{key}: not true or false")
    return value


def optional_text(data: dict[str, Any], key: str) -> str | None:
    """A string or ``null``."""
    return None if data.get(key) is None else text(data, key)


@contextlib.contextmanager
def within(where: str) -> Iterator[None]:
    """Name the object the fields read inside belong to: a :class:`FieldError` ``key: ...`` raised there
    leaves as ``where.key: ...``."""
    try:
        yield
    except FieldError as exc:
        raise FieldError(f"{where}.{exc}") from None


def counts(data: dict[str, Any], key: str) -> dict[str, int]:
    """An object of integers >= 0."""
    table = obj(data.get(key), key)
    return {name: count(table, name) for name in table}


def timings(data: dict[str, Any], key: str) -> dict[str, float]:
    """An object of finite numbers >= 0 (seconds)."""
    table = obj(data.get(key), key)
    return {name: seconds(table, name) for name in table}
