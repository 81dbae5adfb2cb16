"""One place that checks user arguments, so every callback, schedule and datamodule says the same thing.

Each check takes the owner (``"WeightSharing"``) and the argument's name and raises
:class:`~lightning_compress.errors.CompressionConfigError` with a message that names both and shows the
value. Booleans are never numbers here (``True`` is an ``int`` to Python, never a sensible epoch or count).
A check returns the value (converted where that is its job) so a constructor reads as one line per argument::

    self.start_epoch = check_number(OWNER, "start_epoch", start_epoch, low=0)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

from lightning_compress.errors import CompressionConfigError

T = TypeVar("T")


def fail(owner: str, message: str) -> NoReturn:
    """Raise the package's configuration error as ``"<owner>: <message>"``."""
    raise CompressionConfigError(f"{owner}: {message}" if owner else message)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    """An int that is not a bool (``3.0`` is not an int: counts and epochs in YAML are written ``3``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts)


def check_number(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    allow_none: bool = False,
) -> Any:
    """A finite number (an int when ``integer``) inside the given bounds; ``None`` only if ``allow_none``."""
    if value is None and allow_none:
        return None
    ok = is_int(value) if integer else is_number(value)
    if ok:
        v = float(value)
        ok = (low is None or (v > low if low_open else v >= low)) and (high is None or (v < high if high_open else v <= high))
    if not ok:
        kind = "an int" if integer else "a finite number"
        bounds = _range_text(low, high, low_open, high_open)
        none = " or None" if allow_none else ""
        fail(owner, f"{name} must be {kind}{' ' + bounds if bounds else ''}{none}, got {value!r}")
    return value


def check_int(owner: str, name: str, value: Any, *, low: int | None = None, high: int | None = None,
              allow_none: bool = False) -> Any:
    """An int (not a bool) in ``[low, high]``."""
    return check_number(owner, name, value, low=low, high=high, integer=True, allow_none=allow_none)


def check_fraction(owner: str, name: str, value: Any, *, allow_none: bool = False, high_open: bool = False) -> Any:
    """A number in ``[0, 1]`` (``[0, 1)`` with ``high_open``)."""
    return check_number(owner, name, value, low=0.0, high=1.0, high_open=high_open, allow_none=allow_none)


def check_choice(owner: str, name: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of ``choices`` (strings compared as given: configs are case-sensitive like Python)."""
    choices = list(choices)
    if isinstance(value, bool) or value not in choices:
        fail(owner, f"{name} must be one of {choices}, got {value!r}")
    return value


def check_bool(owner: str, name: str, value: Any) -> bool:
    """A real bool (``"false"`` from a hand-written config is not silently true)."""
    if not isinstance(value, bool):
        fail(owner, f"{name} must be true or false, got {value!r}")
    return value


def check_per_layer(owner: str, name: str, value: Any, check: Callable[[str, str, Any], Any]) -> Any:
    """A value or a ``{glob or type alias: value}`` mapping whose keys are strings and values pass ``check``.

    ``check(owner, name, v)`` validates one value. Mappings are copied to plain dicts (YAML gives its own).
    """
    if isinstance(value, Mapping):
        if not value:
            fail(owner, f"{name} must not be an empty mapping")
        for key, v in value.items():
            if not isinstance(key, str) or not key:
                fail(owner, f"{name} keys must be layer globs or type names (strings), got {key!r}")
            check(owner, f"{name}[{key!r}]", v)
        return dict(value)
    check(owner, name, value)
    return value


def check_milestones(owner: str, name: str, value: Any) -> dict[float, float]:
    """A ``{time: fraction}`` mapping with number keys (as YAML writes them) and fractions as values."""
    if not isinstance(value, Mapping) or not value:
        fail(owner, f"{name} must be a non-empty mapping {{epoch or step: sparsity}}, got {value!r}")
    out: dict[float, float] = {}
    for key, v in value.items():
        k = key
        if isinstance(key, str):  # LightningCLI may hand over "2" for 2
            try:
                k = float(key)
            except ValueError:
                fail(owner, f"{name} keys must be numbers (epochs or steps), got {key!r}")
        check_number(owner, f"{name} key", k, low=0)
        check_fraction(owner, f"{name}[{key!r}]", v)
        out[float(k)] = float(v)
    return out


def reraise_as_config_error(owner: str, name: str, err: Exception) -> NoReturn:
    """Turn a ``ValueError`` from a lower layer (``core``, ``schedules``) into one naming the argument."""
    fail(owner, f"{name}: {err}")


def check_writable_file(owner: str, name: str, path: Any) -> str:
    """A path a file can be written to, checked before any work: no NUL, not a folder, no file where a parent
    folder must be, and permission to write in the nearest existing folder. ``~`` is expanded; returns the path."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        fail(owner, f"{name} must be a non-empty file path, got {path!r}")
    if "\0" in os.fspath(path):
        fail(owner, f"{name} {os.fspath(path)!r} contains a NUL character")
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path):
        fail(owner, f"{name} {path!r} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        fail(owner, f"{name} {path!r} cannot be created: {parent!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        fail(owner, f"{name} {path!r} cannot be created: no permission to write in {parent!r}")
    return path


@contextmanager
def as_config_error(owner: str) -> Iterator[None]:
    """A ``ValueError`` from ``core`` (a selection that matches nothing, a lazy layer) becomes the package's error.

    ``core/`` has no Lightning and raises plain ``ValueError``; the user-facing layers promise
    ``CompressionConfigError``. The message keeps its text, prefixed with ``owner`` once.
    """
    try:
        yield
    except CompressionConfigError:
        raise
    except ValueError as err:
        message = str(err)
        prefix = f"{owner}: "
        raise CompressionConfigError(message if message.startswith(prefix) or not owner else prefix + message) from err


__all__ = [
    "as_config_error",
    "check_bool",
    "check_choice",
    "check_fraction",
    "check_int",
    "check_milestones",
    "check_number",
    "check_per_layer",
    "check_writable_file",
    "fail",
    "is_int",
    "is_number",
    "reraise_as_config_error",
]
