"""The mixed edge: every candidate op of one edge, combined by architecture weights (seed 002 Eq. 1)."""

from __future__ import annotations

import torch
from torch import nn

from fastnas.ops import build_op, get_op_spec
from fastnas.ops.weighted_sum import weighted_sum


class MixedEdge(nn.Module):
    """All candidate ops of one supernet edge.

    As in DARTS, every BN is ``affine=False`` and pooling ops are followed by BN(affine=False)
    (REFERENCE.md section 1; ``pool_bn=False`` leaves that BN out, as NAS-Bench-201 does).
    ``forward(x, w)`` returns ``sum_k w_k * op_k(x)``; the ``none`` op contributes exactly zero to the
    output and to the gradient of ``w``, so it is not computed.
    """

    def __init__(self, channels: int, stride: int, ops: tuple[str, ...], pool_bn: bool = True):
        super().__init__()
        self.op_names = tuple(ops)
        self.ops = nn.ModuleList()
        active: list[int] = []
        for k, name in enumerate(ops):
            spec = get_op_spec(name)
            op = build_op(name, channels, stride, affine=False)
            if spec.kind == "pool" and pool_bn:
                op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=False))
            self.ops.append(op)
            if spec.kind != "zero":
                active.append(k)
        if not active:
            raise ValueError(f"an edge needs at least one op other than 'none', got {list(self.op_names)}")
        self.active = tuple(active)
        self.register_buffer("_active_index", torch.tensor(active, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        outputs = [self.ops[k](x) for k in self.active]
        dtypes = {out.dtype for out in outputs}
        if len(dtypes) > 1:  # under autocast an identity skip can differ from conv outputs
            common = outputs[0].dtype
            for dtype in dtypes:
                common = torch.promote_types(common, dtype)
            outputs = [out.to(common) for out in outputs]
        return weighted_sum(outputs, weights.index_select(0, self._active_index))

    def forward_op(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Output of candidate op ``k`` alone (used by methods that run one op per edge)."""
        return self.ops[k](x)
