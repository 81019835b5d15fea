"""fastnas.nn.fused_edge.update_bns_running_stats: the batched (``torch._foreach_*``) BN running-statistics
update of the fused paths against ``nn.BatchNorm2d`` itself in training mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastnas.nn.fused_edge import deferred_running_stats, update_bns_running_stats

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


def _batch(seed: int, k: int = 5, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    z = torch.randn(k, 4, 3, 3, 2, generator=torch.Generator().manual_seed(seed)) * scale + 1.5
    return z, z.mean(dim=(1, 3, 4)), z.var(dim=(1, 3, 4), correction=0)


def test_deferred_updates_equal_immediate_ones_and_wait_for_the_block():
    """Inside ``deferred_running_stats`` nothing moves until the block ends; then every BN holds what
    ``nn.BatchNorm2d`` gives (two calls over different BN lists and counts, one BN with momentum 0.3)."""
    expected, got = _bns(), _bns()
    others_expected, others_got = _bns()[:3], _bns()[:3]
    for bns in (others_expected, others_got):
        bns[1].momentum = 0.3
    z, mean, var = _batch(1)
    z2 = _batch(2, k=3)[0][:, :, :, :, :1]  # another count per channel (4 * 3 * 1)
    for bn, zk in zip(expected, z, strict=True):
        bn.train()(zk)
    for bn, zk in zip(others_expected, z2, strict=True):
        bn.train()(zk)
    before = got[0].running_mean.clone()
    with deferred_running_stats():
        update_bns_running_stats(got, mean, var, 4 * 3 * 2)
        update_bns_running_stats(
            others_got, z2.mean(dim=(1, 3, 4)), z2.var(dim=(1, 3, 4), correction=0), 4 * 3 * 1
        )
        assert torch.equal(got[0].running_mean, before)  # waits for the end of the block
    for bns_e, bns_g in ((expected, got), (others_expected, others_got)):
        for k, (e, g) in enumerate(zip(bns_e, bns_g, strict=True)):
            for name, buffer in e.named_buffers():
                torch.testing.assert_close(dict(g.named_buffers())[name], buffer, msg=f"bn {k} {name}")


def test_deferred_update_of_one_bn_twice_applies_both_in_order():
    expected, got = _bns(), _bns()
    (z1, m1, v1), (z2, m2, v2) = _batch(3), _batch(4)
    for z in (z1, z2):
        for bn, zk in zip(expected, z, strict=True):
            bn.train()(zk)
    with deferred_running_stats():
        update_bns_running_stats(got, m1, v1, 24)
        update_bns_running_stats(got, m2, v2, 24)
    for k, (e, g) in enumerate(zip(expected, got, strict=True)):
        for name, buffer in e.named_buffers():
            torch.testing.assert_close(dict(g.named_buffers())[name], buffer, msg=f"bn {k} {name}")


def test_deferred_updates_are_dropped_when_the_block_raises():
    got = _bns()
    before = [bn.running_mean.clone() for bn in got[:4]]
    _, mean, var = _batch(5)
    with pytest.raises(RuntimeError, match="boom"), deferred_running_stats():
        update_bns_running_stats(got, mean, var, 24)
        raise RuntimeError("boom")
    assert all(torch.equal(bn.running_mean, b) for bn, b in zip(got, before, strict=False))
