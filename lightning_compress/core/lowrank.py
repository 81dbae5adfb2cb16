"""Low-rank factorization of trained layers: truncated SVD for ``nn.Linear``, Tucker-2 for ``nn.Conv2d``.

A dense ``Linear`` with an ``m x n`` weight costs ``m*n`` parameters; its rank-``d`` truncated SVD
``W ~= (U_d S_d^1/2)(S_d^1/2 V_d^T)`` costs ``d*(m+n)`` and is the best rank-``d`` approximation in the
Frobenius norm (Eckart-Young), with squared error equal to the discarded ``sum sigma_i^2``. It saves
parameters only when ``d < m*n/(m+n)``.

A ``Conv2d`` kernel ``K`` (``C_out x C_in x kh x kw``) is decomposed Tucker-2 style along its two channel
modes (Kim et al. 2016): ``K ~= G x_0 U_out x_1 U_in``, which runs as a 1x1 conv (``C_in -> r_in``), a
``kh x kw`` conv on the core (``r_in -> r_out``, carrying stride, padding and dilation) and a 1x1 conv
(``r_out -> C_out``, carrying the bias). Factors are initialised by HOSVD (leading left singular vectors
of the mode-0 and mode-1 unfoldings), optionally refined by HOOI iterations.

Ranks come from one of three rules (:class:`RankRule`): a kept-energy threshold ``tau`` (smallest ``d``
with ``sum_{i<=d} sigma_i^2 / sum sigma^2 >= tau``; per channel mode for convs), a fixed rank, or a
target parameter ratio (factorized weights / dense weights).

The factorized modules contain ordinary ``nn.Linear`` / ``nn.Conv2d`` children, so pruning and weight
sharing select them like any other layer. A :class:`FactorizedLayer` record (name, kind, ranks) is all
that is needed to rebuild the architecture before loading a factorized ``state_dict``
(:func:`apply_factorization_plan`); it can also be read back from the ``state_dict`` itself
(:func:`infer_factorization_plan`).

Pure torch: no Lightning here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_compress.core.lowrank_modules import FACTORIZED_TYPES, LowRankLinear, TuckerConv2d

RuleKind = Literal["energy", "rank", "ratio"]
LayerKind = Literal["svd", "tucker2"]

#: A layer whose weight has more than this fraction of exact zeros is treated as already pruned.
PRUNED_ZERO_FRACTION = 0.01
#: A layer with at most this many distinct values (and far fewer than its size) is treated as shared.
SHARED_MAX_DISTINCT = 256


# --------------------------------------------------------------------------------------------- rank rules
@dataclass(frozen=True)
class RankRule:
    """How to pick a rank: ``energy`` tau in (0, 1], fixed ``rank`` (int, or ``(r_in, r_out)`` for convs),
    or target parameter ``ratio`` in (0, 1) = factorized weights / dense weights."""

    kind: RuleKind
    value: float | int | tuple[int, int]

    def __post_init__(self) -> None:
        if self.kind == "energy":
            if not (isinstance(self.value, (int, float)) and 0 < float(self.value) <= 1):
                raise ValueError(f"energy must be in (0, 1], got {self.value!r}")
        elif self.kind == "rank":
            vals = self.value if isinstance(self.value, (tuple, list)) else (self.value,)
            if len(vals) not in (1, 2) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in vals):
                raise ValueError(f"rank must be a positive int or a pair (r_in, r_out) of them, got {self.value!r}")
        elif self.kind == "ratio":
            if not (isinstance(self.value, (int, float)) and 0 < float(self.value) < 1):
                raise ValueError(f"param_ratio must be in (0, 1), got {self.value!r}")
        else:
            raise ValueError(f"unknown rank rule {self.kind!r}; expected energy, rank or ratio")


def energy_rank(singular_values: Tensor, tau: float) -> int:
    """Smallest ``d`` with ``sum_{i<=d} sigma_i^2 / sum sigma^2 >= tau`` (``sigma`` sorted descending)."""
    e = singular_values.double().pow(2)
    total = e.sum()
    if total <= 0:
        return 1
    cum = torch.cumsum(e, 0) / total
    # tolerate float round-off so that tau=1.0 means "all non-zero energy" rather than "one past the end"
    d = int(torch.searchsorted(cum, torch.tensor(tau, dtype=cum.dtype) - 1e-12).item()) + 1
    return min(d, e.numel())


def kept_energy(singular_values: Tensor, rank: int) -> float:
    e = singular_values.double().pow(2)
    total = float(e.sum())
    return float(e[:rank].sum()) / total if total > 0 else 1.0


def linear_params(m: int, n: int, rank: int) -> int:
    """Weights of the factorized ``m x n`` matrix at ``rank`` (biases excluded: they are unchanged)."""
    return rank * (m + n)


def tucker2_params(c_out: int, c_in: int, k: int, ranks: tuple[int, int]) -> int:
    """Weights of the Tucker-2 chain; ``k`` = kh*kw (biases excluded)."""
    r_in, r_out = ranks
    return c_in * r_in + r_in * r_out * k + r_out * c_out


def ratio_rank_linear(m: int, n: int, ratio: float) -> int:
    """Largest ``d >= 1`` with ``d*(m+n) <= ratio*m*n``."""
    return max(1, min(min(m, n), int(math.floor(ratio * m * n / (m + n)))))


def ratio_ranks_tucker2(c_out: int, c_in: int, k: int, ratio: float) -> tuple[int, int]:
    """Largest channel-proportional ranks ``(a*C_in, a*C_out)`` whose chain fits in ``ratio`` of the kernel."""
    budget = ratio * c_out * c_in * k
    best = (1, 1)
    steps = max(c_in, c_out)
    for i in range(1, steps + 1):
        a = i / steps
        ranks = (max(1, min(c_in, round(a * c_in))), max(1, min(c_out, round(a * c_out))))
        if tucker2_params(c_out, c_in, k, ranks) <= budget:
            best = max(best, ranks, key=lambda r: (r[0] * r[1], r))
    return best


# --------------------------------------------------------------------------------------------- SVD (Linear)
def svd_factors(weight: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Truncated SVD of an ``m x n`` matrix split as ``second (m x d) @ first (d x n)``.

    Each factor takes ``sqrt(sigma)`` so both have the same scale (better conditioned fine-tuning than
    putting all of ``S`` on one side). Computed in float64. Returns ``(first, second, singular_values)``.
    """
    w = weight.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    first = root[:, None] * vh[:rank]
    second = u[:, :rank] * root[None, :]
    return first.to(weight.dtype), second.to(weight.dtype), s.to(weight.dtype)


def factorize_linear(linear: nn.Linear, rank: int) -> LowRankLinear:
    """A :class:`LowRankLinear` initialised with the rank-``rank`` truncated SVD of ``linear.weight``."""
    w = linear.weight
    out = LowRankLinear(linear.in_features, linear.out_features, rank, bias=linear.bias is not None,
                        device=w.device, dtype=w.dtype)
    first, second, _ = svd_factors(w, rank)
    with torch.no_grad():
        out.first.weight.copy_(first)
        out.second.weight.copy_(second)
        if linear.bias is not None:
            out.second.bias.copy_(linear.bias)
    out.train(linear.training)
    return out


# --------------------------------------------------------------------------------------------- Tucker-2 (Conv2d)
def unfold(kernel: Tensor, mode: int) -> Tensor:
    """Mode-``mode`` unfolding: rows indexed by that mode, columns by all the others."""
    return kernel.movedim(mode, 0).reshape(kernel.shape[mode], -1)


def mode_singular_values(kernel: Tensor) -> tuple[Tensor, Tensor]:
    """Singular values of the mode-1 (input channels) and mode-0 (output channels) unfoldings."""
    k = kernel.detach().double()
    return torch.linalg.svdvals(unfold(k, 1)), torch.linalg.svdvals(unfold(k, 0))


def _leading_left(matrix: Tensor, r: int) -> Tensor:
    return torch.linalg.svd(matrix, full_matrices=False)[0][:, :r]


def tucker2_factors(kernel: Tensor, ranks: tuple[int, int], hooi_iters: int = 0) -> tuple[Tensor, Tensor, Tensor, float]:
    """Tucker-2 of a ``C_out x C_in x kh x kw`` kernel: ``(u_in [C_in x r_in], core [r_out x r_in x kh x kw],
    u_out [C_out x r_out], kept_energy = ||core||^2 / ||K||^2)``, by HOSVD plus ``hooi_iters`` HOOI sweeps.

    With orthonormal factors the core is the projection of ``K``, so its energy is exactly the part of
    ``||K||^2`` the approximation keeps and ``||K - K_hat||^2 = ||K||^2 - ||core||^2``.
    """
    r_in, r_out = ranks
    k = kernel.detach().double()
    u_out = _leading_left(unfold(k, 0), r_out)
    u_in = _leading_left(unfold(k, 1), r_in)
    for _ in range(hooi_iters):
        # best u_in given u_out, then best u_out given u_in (alternating least squares on the Tucker form)
        u_in = _leading_left(unfold(torch.einsum("oikl,or->rikl", k, u_out), 1), r_in)
        u_out = _leading_left(unfold(torch.einsum("oikl,is->oskl", k, u_in), 0), r_out)
    core = torch.einsum("oikl,or,is->rskl", k, u_out, u_in)
    total = float(k.pow(2).sum())
    energy = float(core.pow(2).sum()) / total if total > 0 else 1.0
    dt = kernel.dtype
    return u_in.to(dt), core.to(dt), u_out.to(dt), energy


def _tucker_shell(conv: nn.Conv2d, ranks: tuple[int, int]) -> TuckerConv2d:
    w = conv.weight
    return TuckerConv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, ranks, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        device=w.device, dtype=w.dtype,
    )


def factorize_conv2d(conv: nn.Conv2d, ranks: tuple[int, int], hooi_iters: int = 0) -> TuckerConv2d:
    """A :class:`TuckerConv2d` initialised from ``conv.weight`` (groups must be 1)."""
    if conv.groups != 1:
        raise ValueError(f"Tucker-2 needs groups=1, got groups={conv.groups}")
    out = _tucker_shell(conv, ranks)
    u_in, core, u_out, _ = tucker2_factors(conv.weight, ranks, hooi_iters)
    with torch.no_grad():
        out.first.weight.copy_(u_in.T[:, :, None, None])
        out.core.weight.copy_(core)
        out.last.weight.copy_(u_out[:, :, None, None])
        if conv.bias is not None:
            out.last.bias.copy_(conv.bias)
    out.train(conv.training)
    return out


# --------------------------------------------------------------------------------------------- planning
@dataclass
class FactorizedLayer:
    """What one layer became (or why it was left alone). ``ranks`` is ``(d,)`` for SVD, ``(r_in, r_out)`` for Tucker-2."""

    name: str  # module name, e.g. "fc1"
    kind: LayerKind
    ranks: tuple[int, ...]
    energy: float  # fraction of ||W||^2 kept at init
    params_before: int  # weights (bias excluded)
    params_after: int
    applied: bool = True
    reason: str = ""  # why it was skipped, when not applied
    macs_before: int | None = None  # per sample, when the input size is known
    macs_after: int | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ranks"] = list(self.ranks)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "FactorizedLayer":
        d = dict(d)
        d["ranks"] = tuple(int(r) for r in d["ranks"])
        return cls(**d)


def layer_looks_compressed(weight: Tensor) -> str:
    """Non-empty reason when ``weight`` already looks pruned (exact zeros) or shared (few distinct values)."""
    w = weight.detach()
    zeros = int((w == 0).sum())
    if zeros > PRUNED_ZERO_FRACTION * w.numel():
        return f"already pruned ({zeros / w.numel():.1%} exact zeros)"
    distinct = int(torch.unique(w).numel())
    if distinct <= SHARED_MAX_DISTINCT and distinct * 4 < w.numel():
        return f"already shared ({distinct} distinct values)"
    return ""


def plan_layer(name: str, module: nn.Module, rule: RankRule, hooi_iters: int = 0) -> FactorizedLayer:
    """Choose ranks for one ``Linear``/``Conv2d`` and say whether the factorization saves parameters."""
    if isinstance(module, nn.Linear):
        m, n = module.out_features, module.in_features
        s = torch.linalg.svdvals(module.weight.detach().double())
        if rule.kind == "energy":
            d = energy_rank(s, float(rule.value))
        elif rule.kind == "rank":
            v = rule.value
            d = int(v[-1] if isinstance(v, (tuple, list)) else v)
        else:
            d = ratio_rank_linear(m, n, float(rule.value))
        d = max(1, min(d, m, n))
        rec = FactorizedLayer(name, "svd", (d,), kept_energy(s, d), m * n, linear_params(m, n, d))
    elif isinstance(module, nn.Conv2d):
        c_out, c_in, kh, kw = module.weight.shape
        k = kh * kw
        if rule.kind == "energy":
            s_in, s_out = mode_singular_values(module.weight)
            ranks = (energy_rank(s_in, float(rule.value)), energy_rank(s_out, float(rule.value)))
        elif rule.kind == "rank":
            v = rule.value
            if isinstance(v, (tuple, list)):
                ranks = (int(v[0]), int(v[-1]))
            else:
                ranks = (int(v), int(v))
        else:
            ranks = ratio_ranks_tucker2(c_out, c_in, k, float(rule.value))
        ranks = (max(1, min(ranks[0], c_in)), max(1, min(ranks[1], c_out)))
        if module.groups != 1:
            return FactorizedLayer(name, "tucker2", ranks, 1.0, c_out * c_in * k, c_out * c_in * k, False,
                                   f"grouped conv (groups={module.groups}) is not supported")
        energy = tucker2_factors(module.weight, ranks, hooi_iters)[3]
        rec = FactorizedLayer(name, "tucker2", ranks, energy, c_out * c_in * k, tucker2_params(c_out, c_in, k, ranks))
    else:
        raise TypeError(f"{name}: only nn.Linear and nn.Conv2d can be factorized, got {type(module).__name__}")
    if rec.params_after >= rec.params_before:
        rec.applied = False
        rec.reason = f"no parameter saving at ranks {rec.ranks} ({rec.params_after} >= {rec.params_before})"
    return rec


def factorize_module(module: nn.Module, record: FactorizedLayer, hooi_iters: int = 0) -> nn.Module:
    """The factorized replacement of ``module`` at ``record.ranks``, initialised from its weights."""
    if record.kind == "svd":
        return factorize_linear(module, record.ranks[0])
    return factorize_conv2d(module, tuple(record.ranks), hooi_iters)


def empty_factorized(module: nn.Module, record: FactorizedLayer) -> nn.Module:
    """The factorized module's *shape* only (weights left at their init), to load a state_dict into."""
    w = module.weight
    if record.kind == "svd":
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{record.name}: plan says svd but the module is {type(module).__name__}")
        out = LowRankLinear(module.in_features, module.out_features, record.ranks[0], bias=module.bias is not None,
                            device=w.device, dtype=w.dtype)
    else:
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"{record.name}: plan says tucker2 but the module is {type(module).__name__}")
        out = _tucker_shell(module, tuple(record.ranks))
    out.train(module.training)
    return out


def dense_shell(module: LowRankLinear | TuckerConv2d) -> nn.Module:
    """The dense layer a factorized module stands for (weights left at their init), to load a dense state_dict."""
    if isinstance(module, LowRankLinear):
        w = module.first.weight
        out = nn.Linear(module.in_features, module.out_features, bias=module.second.bias is not None,
                        device=w.device, dtype=w.dtype)
    else:
        core, w = module.core, module.first.weight
        out = nn.Conv2d(module.in_channels, module.out_channels, core.kernel_size, stride=core.stride,
                        padding=core.padding, dilation=core.dilation, bias=module.last.bias is not None,
                        padding_mode=core.padding_mode, device=w.device, dtype=w.dtype)
    out.train(module.training)
    return out


# --------------------------------------------------------------------------------------------- model surgery
def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at dotted ``name`` inside ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def inside_factorized(model: nn.Module, module_name: str) -> bool:
    """True when ``module_name`` is a factorized module or one of its children (never factorize twice)."""
    parts = module_name.split(".")
    for i in range(len(parts), 0, -1):
        if isinstance(model.get_submodule(".".join(parts[:i])), FACTORIZED_TYPES):
            return True
    return False


def apply_factorization_plan(model: nn.Module, plan: Iterable[FactorizedLayer | Mapping]) -> nn.Module:
    """Rebuild the factorized architecture described by ``plan`` in ``model`` (in place; returns ``model``).

    Weights of the new modules are placeholders: load the factorized ``state_dict`` afterwards. Layers
    already factorized with the same ranks are left as they are, so applying a plan twice is harmless.
    """
    for rec in plan:
        rec = rec if isinstance(rec, FactorizedLayer) else FactorizedLayer.from_dict(rec)
        if not rec.applied:
            continue
        current = model.get_submodule(rec.name)
        if isinstance(current, FACTORIZED_TYPES):
            have = (current.rank,) if isinstance(current, LowRankLinear) else current.ranks
            if tuple(have) != tuple(rec.ranks):
                raise ValueError(f"{rec.name} is already factorized with ranks {have}, plan says {rec.ranks}")
            continue
        replace_module(model, rec.name, empty_factorized(current, rec))
    return model


def infer_factorization_plan(state_dict: Mapping[str, Tensor], model: nn.Module) -> list[FactorizedLayer]:
    """Read the plan back from a factorized ``state_dict``: keys ``<layer>.first/second.weight`` (SVD) or
    ``<layer>.first/core/last.weight`` (Tucker-2) under a layer that is still dense in ``model``."""
    plan = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or not name or inside_factorized(model, name):
            continue
        pre = name + "."
        first = state_dict.get(pre + "first.weight")
        if first is None or (pre + "weight") in state_dict:
            continue
        if isinstance(module, nn.Linear) and (pre + "second.weight") in state_dict:
            d = int(first.shape[0])
            m, n = module.out_features, module.in_features
            plan.append(FactorizedLayer(name, "svd", (d,), float("nan"), m * n, linear_params(m, n, d)))
        elif isinstance(module, nn.Conv2d) and (pre + "core.weight") in state_dict:
            core = state_dict[pre + "core.weight"]
            ranks = (int(core.shape[1]), int(core.shape[0]))
            c_out, c_in, kh, kw = module.weight.shape
            plan.append(FactorizedLayer(name, "tucker2", ranks, float("nan"), c_out * c_in * kh * kw,
                                        tucker2_params(c_out, c_in, kh * kw, ranks)))
    return plan


# --------------------------------------------------------------------------------------------- MACs
def dense_macs(module: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one sample through a dense ``Linear``/``Conv2d`` (shapes without the batch dim)."""
    if isinstance(module, nn.Linear):
        positions = math.prod(out_shape[:-1]) if len(out_shape) > 1 else 1
        return positions * module.in_features * module.out_features
    c_out, c_in_g, kh, kw = module.weight.shape
    return math.prod(out_shape[-2:]) * c_out * c_in_g * kh * kw


def factorized_macs(record: FactorizedLayer, module: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """MACs of one sample through the factorized replacement of dense ``module``."""
    if record.kind == "svd":
        positions = math.prod(out_shape[:-1]) if len(out_shape) > 1 else 1
        return positions * linear_params(module.out_features, module.in_features, record.ranks[0])
    r_in, r_out = record.ranks
    c_out, c_in, kh, kw = module.weight.shape
    hw_in, hw_out = math.prod(in_shape[-2:]), math.prod(out_shape[-2:])
    return hw_in * c_in * r_in + hw_out * (r_in * r_out * kh * kw + r_out * c_out)


def plan_table(plan: Sequence[FactorizedLayer]) -> str:
    """Fixed-width text table of a plan (what the callback logs and prints)."""
    head = f"{'layer':<24} {'kind':<8} {'ranks':<10} {'energy':>7} {'params':>17} {'MACs':>21}  note"
    lines = [head, "-" * len(head)]
    tb = ta = 0
    for r in plan:
        after = r.params_after if r.applied else r.params_before
        tb, ta = tb + r.params_before, ta + after
        macs = f"{r.macs_before}->{r.macs_after}" if r.macs_before is not None and r.applied else (
            f"{r.macs_before}" if r.macs_before is not None else "n/a")
        energy = "n/a" if math.isnan(r.energy) else f"{r.energy:.4f}"
        note = "factorized" if r.applied else f"left dense: {r.reason}"
        lines.append(f"{r.name:<24} {r.kind:<8} {'x'.join(map(str, r.ranks)):<10} {energy:>7} "
                     f"{f'{r.params_before}->{after}':>17} {macs:>21}  {note}")
    lines.append(f"{'total':<24} {'':<8} {'':<10} {'':>7} {f'{tb}->{ta}':>17}  weights x{tb / max(ta, 1):.2f} smaller")
    return "\n".join(lines)


__all__ = [
    "FACTORIZED_TYPES", "FactorizedLayer", "LowRankLinear", "RankRule", "TuckerConv2d", "apply_factorization_plan",
    "dense_macs", "dense_shell", "empty_factorized", "energy_rank", "factorize_conv2d", "factorize_linear", "factorize_module",
    "factorized_macs", "infer_factorization_plan", "inside_factorized", "kept_energy", "layer_looks_compressed",
    "linear_params", "mode_singular_values", "plan_layer", "plan_table", "ratio_rank_linear", "ratio_ranks_tucker2",
    "replace_module", "svd_factors", "tucker2_factors", "tucker2_params",
]
