"""Which tensors a compression technique acts on.

Every callback, the monitor, the export and the sensitivity tool select their tensors here, the same way:
by module type, then include/exclude globs over the parameter's qualified name (``features.0.weight``) or
the module's name (``features.0``). By default that is every *weight matrix* of a model: Linear, Conv1d/2d/3d
and their transposes, Embedding, MultiheadAttention's input projections (``in_proj_weight``, or
``q/k/v_proj_weight`` when separate; ``out_proj`` is a Linear already) and the RNN/LSTM/GRU matrices
(``weight_ih_l*``, ``weight_hh_l*``, ``weight_hr_l*``, reverse directions included). Biases and norms stay out.

Selection is by tensor identity: a Parameter reached through two modules (an embedding tied to the LM head)
is selected once, under its first name in ``named_modules`` order; its other names are kept as ``aliases``.
A pattern that matches nothing is almost always a typo, so it is an error rather than a silent no-op.
Weights under ``weight_norm``/``spectral_norm``/``torch.nn.utils.parametrize`` are computed tensors, not
Parameters: they are left out with a warning that names the layers and says how to handle them.

Pure torch: errors are ``ValueError`` (the callbacks turn them into ``CompressionConfigError``).
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence, TypeVar

from torch import nn
from torch.nn.parameter import UninitializedParameter
from torch.nn.utils import parametrize

CONV_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
#: Module types whose weight matrices are compressed by default: every weight matrix of a model.
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    *CONV_TYPES,
    nn.Embedding,
    nn.MultiheadAttention,
    nn.RNNBase,
)

#: Short names usable in configs instead of classes (``types: [linear, conv]``).
TYPE_ALIASES: dict[str, tuple[type[nn.Module], ...]] = {
    "linear": (nn.Linear,),
    "conv": CONV_TYPES,
    "conv1d": (nn.Conv1d,),
    "conv2d": (nn.Conv2d,),
    "conv3d": (nn.Conv3d,),
    "convtranspose": CONV_TYPES[3:],
    "embedding": (nn.Embedding,),
    "attention": (nn.MultiheadAttention,),
    "rnn": (nn.RNNBase,),
    "lstm": (nn.LSTM,),
    "gru": (nn.GRU,),
    "norm": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm),
}

#: The RNN weight-matrix prefixes (``weight_ih_l0``, ``weight_hh_l1_reverse``, ``weight_hr_l0`` with proj_size).
_RNN_PREFIXES = ("weight_ih_l", "weight_hh_l", "weight_hr_l")


@dataclass(frozen=True)
class Target:
    """One compressible tensor: ``module.<param_name>`` reached at ``module_name``.

    ``aliases`` are the tensor's other qualified names when it is tied (the same Parameter in two places).
    """

    module_name: str
    module: nn.Module
    param_name: str = "weight"
    aliases: tuple[str, ...] = ()

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


def weight_names(module: nn.Module) -> list[str]:
    """The names of ``module``'s weight matrices: what ``param_names=("weight",)`` means for its type."""
    if isinstance(module, nn.MultiheadAttention):
        if module.in_proj_weight is not None:
            return ["in_proj_weight"]
        return ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
    if isinstance(module, nn.RNNBase):
        return [n for n, _ in module.named_parameters(recurse=False) if n.startswith(_RNN_PREFIXES)]
    return ["weight"]


def resolve_types(types: Iterable[str | type[nn.Module]] | None) -> tuple[type[nn.Module], ...]:
    """Turn ``["linear", "conv", torch.nn.Embedding]`` into a tuple of classes; ``None`` means the defaults."""
    if types is None:
        return DEFAULT_TYPES
    if isinstance(types, str):
        types = [types]
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
    names = (target.name, target.module_name, *target.aliases)
    return any(fnmatch.fnmatchcase(n, pattern) for n in names) or any(
        fnmatch.fnmatchcase(a.rpartition(".")[0], pattern) for a in target.aliases
    )


def _param_names_for(module: nn.Module, param_names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for pname in param_names:
        out.extend(weight_names(module) if pname == "weight" else [pname])
    return list(dict.fromkeys(out))


def _aliases(model: nn.Module) -> dict[int, list[str]]:
    """Every qualified name of every parameter, ties included, keyed by tensor identity."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def _candidates(
    model: nn.Module, classes: tuple[type[nn.Module], ...], param_names: Sequence[str]
) -> tuple[list[Target], list[str], list[str]]:
    """``(targets, parametrized module names, lazy module names)``, each tensor once, in module order."""
    all_names = _aliases(model)
    seen: set[int] = set()
    out: list[Target] = []
    parametrized: list[str] = []
    lazy: list[str] = []
    for module_name, module in model.named_modules(remove_duplicate=False):
        if not isinstance(module, classes):
            continue
        for pname in _param_names_for(module, param_names):
            p = getattr(module, pname, None)
            if isinstance(p, UninitializedParameter):
                lazy.append(module_name)
            elif isinstance(p, nn.Parameter) and p.numel() > 0:
                if id(p) in seen:
                    continue
                seen.add(id(p))
                name = f"{module_name}.{pname}" if module_name else pname
                aliases = tuple(n for n in all_names.get(id(p), []) if n != name)
                out.append(Target(module_name, module, pname, aliases))
            elif p is not None and not isinstance(p, nn.Parameter) and _is_parametrized(module, pname):
                parametrized.append(module_name)
    return out, list(dict.fromkeys(parametrized)), list(dict.fromkeys(lazy))


def _is_parametrized(module: nn.Module, pname: str) -> bool:
    """A weight computed from other tensors: ``parametrize`` (new API) or old ``weight_norm``/``spectral_norm``."""
    new = parametrize.is_parametrized(module, pname)
    old = any(isinstance(getattr(module, f"{pname}{suffix}", None), nn.Parameter) for suffix in ("_g", "_v", "_orig"))
    return new or old


PARAMETRIZED_HELP = (
    "remove the parametrization before compressing (torch.nn.utils.parametrize.remove_parametrizations(module, "
    "'weight'), or torch.nn.utils.remove_weight_norm / remove_spectral_norm for the old API), or exclude these "
    "layers to silence this warning"
)


def find_targets(
    model: nn.Module,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    types: Iterable[str | type[nn.Module]] | None = None,
    param_names: Sequence[str] = ("weight",),
    owner: str = "targets",
) -> list[Target]:
    """Select the tensors to compress, in ``named_modules`` order (deterministic on every rank), each once.

    ``include``/``exclude`` are globs over parameter or module names (a tied tensor's aliases count).
    ``param_names``: ``"weight"`` means each module's weight matrices (``in_proj_weight`` for attention,
    ``weight_ih_l0``... for RNNs); other names are taken literally (``"bias"``). ``owner`` names the caller in
    messages. Raises ``ValueError`` when a pattern matches nothing, nothing is selected, or a selected layer is
    lazy and not yet initialised; warns when selected layers hold a parametrized weight.
    """
    include = [include] if isinstance(include, str) else list(include or [])
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
    classes = resolve_types(types)
    candidates, parametrized, lazy = _candidates(model, classes, param_names)

    def wanted(module_name: str) -> bool:
        def hit(pat: str) -> bool:
            return fnmatch.fnmatchcase(module_name, pat) or any(
                fnmatch.fnmatchcase(f"{module_name}.{p}", pat) for p in param_names
            )

        return (not include or any(hit(p) for p in include)) and not any(hit(p) for p in exclude)

    excluded_on_purpose = [n for n in lazy + parametrized if not wanted(n)]
    lazy = [n for n in lazy if wanted(n)]
    if lazy:
        raise ValueError(
            f"{owner}: layers {lazy} are lazy (e.g. nn.LazyLinear) and not yet initialised, so their size is "
            "unknown; run one forward pass on an example batch before fit (for instance in the LightningModule's "
            "__init__ or setup(): self(example_batch)), or exclude them"
        )
    parametrized = [n for n in parametrized if wanted(n)]
    if parametrized:
        warnings.warn(f"{owner}: layers {parametrized} hold a parametrized weight (weight_norm, spectral_norm or "
                      f"torch.nn.utils.parametrize) and are NOT compressed: {PARAMETRIZED_HELP}", UserWarning,
                      stacklevel=2)
    for what, patterns in (("include", include), ("exclude", exclude)):
        for pat in patterns:
            if not any(_matches(pat, t) for t in candidates) and not (
                what == "exclude" and any(fnmatch.fnmatchcase(n, pat) for n in excluded_on_purpose)
            ):
                names = ", ".join(t.name for t in candidates) or "none"
                extra = f"; parametrized layers {parametrized} cannot be selected ({PARAMETRIZED_HELP})" if parametrized else ""
                raise ValueError(f"{owner}: {what} pattern {pat!r} matches no eligible layer (eligible: {names}){extra}")
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


def _key_hits(key: str, targets: Sequence[Target]) -> list[str]:
    alias = TYPE_ALIASES.get(key.lower())
    if alias is not None:
        return [t.name for t in targets if isinstance(t.module, alias)]
    return [t.name for t in targets if _matches(key, t)]


def dead_keys(value: Mapping[str, object], targets: Sequence[Target]) -> dict[str, str]:
    """``{key: why}`` for the keys of a per-layer mapping that decide no layer's value.

    A key is dead when it matches no selected layer, or when every layer it matches is matched again by a
    later key (later keys win). A type alias such as ``conv`` that matches nothing (no conv in an MLP) is not a
    mistake (Deep Compression's ``{"conv": 8, "linear": 5}`` fits several models) but still decides nothing on
    this model, so it is reported too, with words that say so.
    """
    keys = list(value)
    hits = {k: _key_hits(k, targets) for k in keys}
    out: dict[str, str] = {}
    for i, key in enumerate(keys):
        if not hits[key]:
            if key.lower() in TYPE_ALIASES:
                out[key] = f"names a layer type this model has no selected layer of ({[t.name for t in targets]})"
            else:
                out[key] = f"matches no selected layer ({[t.name for t in targets]})"
            continue
        later = set().union(*[set(hits[k]) for k in keys[i + 1:]]) if i + 1 < len(keys) else set()
        if set(hits[key]) <= later:
            out[key] = "is overridden for every layer it matches by a later key (later keys win)"
    return out


def per_target_value(
    value: V | Mapping[str, V], targets: Sequence[Target], owner: str, what: str, default: V | None = None
) -> dict[str, V]:
    """Expand a scalar or a ``{glob or type alias: value}`` mapping into ``{target.name: value}``.

    Later entries of the mapping win over earlier ones, so a config can say ``{"*": 0.9, "fc3*": 0.7}``.
    Type aliases (``linear``, ``conv``) match by module type. A key that decides no layer's value (matches
    nothing, or is overridden everywhere by a later key) is a warning naming the key (see :func:`dead_keys`);
    a type alias that matches nothing is reported the same way (not an error: one recipe fits several models).
    """
    if not isinstance(value, Mapping):
        return {t.name: value for t in targets}
    out: dict[str, V] = {}
    for key, v in value.items():
        for name in _key_hits(key, targets):
            out[name] = v
    dead = [f"{what} key {key!r} {why}" for key, why in dead_keys(value, targets).items()]
    missing = [t.name for t in targets if t.name not in out]
    if missing and default is None:
        raise ValueError(f"{owner}: {what} gives no value for layers {missing}; add a '*' entry"
                         + "".join(f"; {d}" for d in dead))
    for d in dead:
        warnings.warn(f"{owner}: {d}; it has no effect", UserWarning, stacklevel=2)
    if missing:
        out.update({m: default for m in missing})
    return out


__all__ = [
    "CONV_TYPES",
    "DEFAULT_TYPES",
    "TYPE_ALIASES",
    "Target",
    "dead_keys",
    "find_targets",
    "per_target_value",
    "resolve_types",
    "weight_names",
]
