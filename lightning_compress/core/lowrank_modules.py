"""The modules a factorized layer becomes: :class:`LowRankLinear` (two Linears) and :class:`TuckerConv2d`
(1x1 -> kxk -> 1x1 convs). Their children are ordinary ``nn.Linear``/``nn.Conv2d``, so pruning and weight
sharing select them like any other layer. Pure torch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LowRankLinear(nn.Module):
    """``second(first(x))``: ``first`` is ``in -> rank`` without bias, ``second`` is ``rank -> out`` with the bias."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must be in [1, {min(in_features, out_features)}], got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    def dense_weight(self) -> Tensor:
        """The ``out x in`` matrix this pair computes (not used in this module's forward)."""
        return self.second.weight @ self.first.weight

    @property
    def weight(self) -> Tensor:
        """The product ``second.weight @ first.weight``, for code that reads ``.weight`` of the layer it
        replaced: ``nn.MultiheadAttention`` reads ``out_proj.weight``/``.bias`` directly in its forward, so a
        factorized ``out_proj`` keeps attention running (and gradients reach both factors)."""
        return self.dense_weight()

    @property
    def bias(self) -> Tensor | None:
        return self.second.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class TuckerConv2d(nn.Module):
    """Tucker-2 conv: ``last(core(first(x)))`` = 1x1 (C_in -> r_in), kh x kw (r_in -> r_out), 1x1 (r_out -> C_out).

    The 1x1 ``first`` conv commutes with any padding mode (it is pointwise), so padding, stride and
    dilation all sit on ``core``; the bias sits on ``last``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        ranks: tuple[int, int],
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ):
        super().__init__()
        r_in, r_out = ranks
        if not (1 <= r_in <= in_channels and 1 <= r_out <= out_channels):
            raise ValueError(f"ranks must be in [1, {in_channels}] x [1, {out_channels}], got {ranks}")
        self.in_channels, self.out_channels, self.ranks = in_channels, out_channels, (int(r_in), int(r_out))
        kw = dict(device=device, dtype=dtype)
        self.first = nn.Conv2d(in_channels, r_in, 1, bias=False, **kw)
        self.core = nn.Conv2d(
            r_in, r_out, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False,
            padding_mode=padding_mode, **kw,
        )
        self.last = nn.Conv2d(r_out, out_channels, 1, bias=bias, **kw)

    def forward(self, x: Tensor) -> Tensor:
        return self.last(self.core(self.first(x)))

    def dense_weight(self) -> Tensor:
        """The ``C_out x C_in x kh x kw`` kernel this chain computes."""
        u_in = self.first.weight[:, :, 0, 0]  # r_in x C_in
        u_out = self.last.weight[:, :, 0, 0]  # C_out x r_out
        return torch.einsum("or,rskl,si->oikl", u_out, self.core.weight, u_in)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, ranks={self.ranks}"


FACTORIZED_TYPES = (LowRankLinear, TuckerConv2d)


__all__ = ["FACTORIZED_TYPES", "LowRankLinear", "TuckerConv2d"]
