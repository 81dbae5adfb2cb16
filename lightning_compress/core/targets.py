"""Which tensors a compression technique acts on.

Every callback selects its layers the same way: by module type, then include/exclude globs over the
parameter's qualified name (``features.0.weight``) or the module's name (``features.0``). A pattern that
matches nothing is almost always a typo, so it is an error rather than a silent no-op.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence, TypeVar

from torch import nn

#: Module types whose ``weight`` is compressed by default (Deep Compression compresses FC and conv weights).
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
CONV_TYPES: tuple[type[nn.Module], ...] = DEFAULT_TYPES[1:]

#: Short names usable in configs instead of classes (``types: [linear, conv]``).
TYPE_ALIASES: dict[str, tuple[type[nn.Module], ...]] = {
    "linear": (nn.Linear,),
    "conv": CONV_TYPES,
    "conv1d": (nn.Conv1d,),
    "conv2d": (nn.Conv2d,),
    "conv3d": (nn.Conv3d,),
    "convtranspose": DEFAULT_TYPES[4:],
    "embedding": (nn.Embedding,),
    "norm": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm),
}


@dataclass(frozen=True)
class Target:
    """One compressible tensor: ``module.<param_name>`` reached at ``module_name``."""

    module_name: str
    module: nn.Module
    param_name: str = "weight"

    @property
    def name(self) -> str:
        """Qualified parameter name, the key in ``model.state_dict()``."""
        return f"{self.module_name}.{self.param_name}" if self.module_name else self.param_name

    @property
    def param(self) -> nn.Parameter:
        return getattr(self.module, self.param_name)

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, CONV_TYPES)


def resolve_types(types: Iterable[str | type[nn.Module]] | None) -> tuple[type[nn.Module], ...]:
    """Turn ``["linear", "conv", torch.nn.Embedding]`` into a tuple of classes; ``None`` means the defaults."""
    if types is None:
        return DEFAULT_TYPES
    out: list[type[nn.Module]] = []
    for t in types:
        if isinstance(t, str):
            key = t.lower()
            if key not in TYPE_ALIASES:
                raise ValueError(f"types: unknown layer type {t!r}; known: {sorted(TYPE_ALIASES)}")
            out.extend(TYPE_ALIASES[key])
        elif isinstance(t, type) and issubclass(t, nn.Module):
            out.append(t)
        else:
            raise ValueError(f"types: expected a layer-type name or an nn.Module subclass, got {t!r}")
    return tuple(dict.fromkeys(out))


def _matches(pattern: str, target: Target) -> bool:
    return fnmatch.fnmatchcase(target.name, pattern) or fnmatch.fnmatchcase(target.module_name, pattern)


def find_targets(
    model: nn.Module,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    types: Iterable[str | type[nn.Module]] | None = None,
    param_names: Sequence[str] = ("weight",),
    owner: str = "targets",
) -> list[Target]:
    """Select the tensors to compress, in ``named_modules`` order (deterministic on every rank).

    ``include``/``exclude`` are globs over parameter or module names. ``owner`` names the callback in errors.
    Raises ``ValueError`` when a pattern matches nothing or nothing is selected at all.
    """
    include = [include] if isinstance(include, str) else list(include or [])
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
    classes = resolve_types(types)
    candidates: list[Target] = []
    for module_name, module in model.named_modules():
        if not isinstance(module, classes):
            continue
        for pname in param_names:
            p = getattr(module, pname, None)
            if isinstance(p, nn.Parameter) and p.numel() > 0:
                candidates.append(Target(module_name, module, pname))
    for what, patterns in (("include", include), ("exclude", exclude)):
        for pat in patterns:
            if not any(_matches(pat, t) for t in candidates):
                names = ", ".join(t.name for t in candidates) or "none"
                raise ValueError(f"{owner}: {what} pattern {pat!r} matches no eligible layer (eligible: {names})")
    selected = [
        t
        for t in candidates
        if (not include or any(_matches(p, t) for p in include)) and not any(_matches(p, t) for p in exclude)
    ]
    if not selected:
        raise ValueError(
            f"{owner}: no eligible layer in {type(model).__name__} "
            f"(types={[c.__name__ for c in classes]}, include={include}, exclude={exclude})"
        )
    return selected


V = TypeVar("V")


def per_target_value(
    value: V | Mapping[str, V], targets: Sequence[Target], owner: str, what: str, default: V | None = None
) -> dict[str, V]:
    """Expand a scalar or a ``{glob or type alias: value}`` mapping into ``{target.name: value}``.

    Later entries of the mapping win over earlier ones, so a config can say ``{"*": 0.9, "fc3*": 0.7}``.
    Type aliases (``linear``, ``conv``) match by module type. Every key must match some target.
    """
    if not isinstance(value, Mapping):
        return {t.name: value for t in targets}
    out: dict[str, V] = {}
    for key, v in value.items():
        hit = False
        for t in targets:
            if key.lower() in TYPE_ALIASES:
                ok = isinstance(t.module, TYPE_ALIASES[key.lower()])
            else:
                ok = _matches(key, t)
            if ok:
                out[t.name] = v
                hit = True
        if not hit:
            raise ValueError(f"{owner}: {what} key {key!r} matches no selected layer ({[t.name for t in targets]})")
    missing = [t.name for t in targets if t.name not in out]
    if missing:
        if default is None:
            raise ValueError(f"{owner}: {what} gives no value for layers {missing}; add a '*' entry")
        out.update({m: default for m in missing})
    return out
