"""fastnas.nn.fused_edge.update_bns_running_stats: the batched (``torch._foreach_*``) BN running-statistics
update of the fused paths against ``nn.BatchNorm2d`` itself in training mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastnas.nn.fused_edge import update_bns_running_stats

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bns() -> list[nn.BatchNorm2d]:
    """Four BNs like the edges of a node, one with a cumulative average and one that tracks nothing, with
    non-trivial running statistics to start from."""
    bns = [nn.BatchNorm2d(3, affine=False) for _ in range(3)]
    bns.append(nn.BatchNorm2d(3, affine=False, momentum=None))
    bns.append(nn.BatchNorm2d(3, affine=False, track_running_stats=False))
    gen = torch.Generator().manual_seed(0)
    for bn in bns[:4]:
        bn.running_mean.copy_(torch.randn(3, generator=gen))
        bn.running_var.copy_(torch.rand(3, generator=gen) + 0.5)
        bn.num_batches_tracked.fill_(2)
    return bns


def test_batched_update_equals_batch_norm_in_training_mode():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(5, 4, 3, 3, 2, generator=gen) * 2.0 + 1.5  # [K, N, C, H, W]
    expected, got = _bns(), _bns()
    for bn, zk in zip(expected, z, strict=True):
        bn.train()(zk)
    update_bns_running_stats(got, z.mean(dim=(1, 3, 4)), z.var(dim=(1, 3, 4), correction=0), 4 * 3 * 2)
    for k, (e, g) in enumerate(zip(expected, got, strict=True)):
        for name, buffer in e.named_buffers():
            torch.testing.assert_close(dict(g.named_buffers())[name], buffer, msg=f"bn {k} {name}")
    assert not torch.equal(got[0].running_mean, _bns()[0].running_mean)  # it did move
    assert int(got[0].num_batches_tracked) == 3


def test_count_below_two_is_refused():
    with pytest.raises(ValueError, match="count >= 2"):
        update_bns_running_stats(_bns(), torch.zeros(5, 3), torch.ones(5, 3), 1)
