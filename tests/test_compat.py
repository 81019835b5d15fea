"""``fastnas.compat.darts.Network``: a DARTS-era script's model, driven only through the interface the
DARTS code calls (``_loss``, ``new``, ``arch_parameters``, ``state_dict`` / ``named_parameters``).

The helpers here (:class:`Architect`, :func:`run_script_steps`, :func:`run_fastnas_steps`) are shared by
``tests/test_compat_pcdarts.py`` and ``tests/test_compat_pdarts.py``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from fastnas.algorithms.architect import first_order_arch_gradients, unrolled_arch_gradients
from fastnas.compat._base import WrongNetworkError
from fastnas.compat.darts import Network
from fastnas.errors import ConfigError
from fastnas.genotype import Genotype
from fastnas.ops import DARTS_OPS
from fastnas.search_model import SearchModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Batch = tuple[torch.Tensor, torch.Tensor]
# the script's hyper-parameters (DARTS' CIFAR-10 search; a larger architecture lr makes the steps visible)
LR, MOMENTUM, WEIGHT_DECAY, GRAD_CLIP = 0.025, 0.9, 3e-4, 5.0
ARCH_LR, ARCH_WEIGHT_DECAY = 3e-2, 1e-3


def tiny(**kwargs: object) -> Network:
    torch.manual_seed(0)
    return Network(4, 10, 3, nn.CrossEntropyLoss(), **kwargs).double()  # type: ignore[arg-type]


def batch(seed: int, n: int = 4) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class Architect:
    """The architecture step of the DARTS-era scripts, written from DARTS (Liu, Simonyan & Yang, "DARTS:
    Differentiable Architecture Search", ICLR 2019), Eq. 6-8, against the interface those scripts use:
    ``Adam(model.arch_parameters(), betas=(0.5, 0.999))``; first order: the validation loss's gradient;
    second order: a virtual SGD step ``w' = w - eta (momentum * buf + grad + wd * w)`` (no momentum term
    before the optimiser has buffers) loaded into ``model.new()`` through ``state_dict()`` updated with
    ``named_parameters()`` keys, then ``grad_a L_val(w') - eta * H v`` with the finite-difference
    Hessian-vector product at ``w +- eps v`` (weights shifted in place), ``eps = 0.01 / ||v||``."""

    def __init__(self, model: nn.Module, momentum: float = MOMENTUM, weight_decay: float = WEIGHT_DECAY):
        self.model, self.momentum, self.weight_decay = model, momentum, weight_decay
        self.optimizer = torch.optim.Adam(
            model.arch_parameters(), lr=ARCH_LR, betas=(0.5, 0.999), weight_decay=ARCH_WEIGHT_DECAY
        )

    def step(self, x_train, y_train, x_valid, y_valid, eta: float, network_optimizer, unrolled: bool) -> None:
        self.optimizer.zero_grad()
        if unrolled:
            grads = self.unrolled_gradients((x_train, y_train), (x_valid, y_valid), eta, network_optimizer)
            for alpha, g in zip(self.model.arch_parameters(), grads):
                alpha.grad = g
        else:
            self.model._loss(x_valid, y_valid).backward()
        self.optimizer.step()

    def virtual_model(self, train: Batch, eta: float, network_optimizer: torch.optim.Optimizer) -> nn.Module:
        weights = list(self.model.parameters())
        grads = torch.autograd.grad(self.model._loss(*train), weights)
        theta = flat([w.detach() for w in weights])
        buffers = [network_optimizer.state.get(w, {}).get("momentum_buffer") for w in weights]
        moment = (
            flat(buffers) * self.momentum  # type: ignore[arg-type]
            if all(b is not None for b in buffers)
            else torch.zeros_like(theta)
        )
        step = theta - eta * (moment + flat(list(grads)) + self.weight_decay * theta)
        virtual = self.model.new()
        state, offset = self.model.state_dict(), 0
        for name, w in self.model.named_parameters():
            state[name] = step[offset : offset + w.numel()].view_as(w)
            offset += w.numel()
        assert offset == step.numel()
        virtual.load_state_dict(state)
        return virtual

    def unrolled_gradients(
        self, train: Batch, valid: Batch, eta: float, network_optimizer: torch.optim.Optimizer
    ) -> list[torch.Tensor]:
        virtual = self.virtual_model(train, eta, network_optimizer)
        virtual._loss(*valid).backward()
        d_alpha = [a.grad.clone() for a in virtual.arch_parameters()]
        v = [w.grad.clone() for w in virtual.parameters()]
        eps = 0.01 / flat(v).norm()
        weights = list(self.model.parameters())
        with torch.no_grad():
            for w, g in zip(weights, v):
                w.add_(eps * g)
        g_plus = torch.autograd.grad(self.model._loss(*train), self.model.arch_parameters())
        with torch.no_grad():
            for w, g in zip(weights, v):
                w.sub_(2 * eps * g)
        g_minus = torch.autograd.grad(self.model._loss(*train), self.model.arch_parameters())
        with torch.no_grad():
            for w, g in zip(weights, v):
                w.add_(eps * g)
        return [d - eta * (p - m) / (2 * eps) for d, p, m in zip(d_alpha, g_plus, g_minus)]


def run_script_steps(model: nn.Module, batches: list[tuple[Batch, Batch]], unrolled: bool) -> None:
    """The DARTS-era ``train()`` loop body: the architect's step on the validation batch, then the weight
    step (``SGD(model.parameters())``, gradient norm clipped to 5)."""
    optimizer = torch.optim.SGD(model.parameters(), LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    architect = Architect(model)
    for train, valid in batches:
        architect.step(*train, *valid, LR, optimizer, unrolled=unrolled)
        optimizer.zero_grad()
        model._loss(*train).backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()


def run_fastnas_steps(model: SearchModel, batches: list[tuple[Batch, Batch]], unrolled: bool) -> None:
    """The same iterations with fastnas's own architecture gradients on a :class:`fastnas.SearchModel`."""
    weights = model.weight_parameters()
    optimizer = torch.optim.SGD(weights, LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    arch_optimizer = torch.optim.Adam(
        model.arch_parameters(), lr=ARCH_LR, betas=(0.5, 0.999), weight_decay=ARCH_WEIGHT_DECAY
    )
    for train, valid in batches:
        if unrolled:
            grads, _ = unrolled_arch_gradients(model, train, valid, LR, optimizer)
        else:
            grads, _ = first_order_arch_gradients(model, valid)
        for alpha, g in zip(model.arch_parameters(), grads):
            alpha.grad = g
        arch_optimizer.step()
        optimizer.zero_grad()
        model.loss(*train).backward()
        nn.utils.clip_grad_norm_(weights, GRAD_CLIP)
        optimizer.step()


def assert_same_search(compat: nn.Module, native: SearchModel, names: tuple[str, ...]) -> None:
    """Same architecture parameters (``names``, in order), weights, BN statistics and logits."""
    arch = compat.arch_parameters()
    assert [tuple(a.shape) for a in arch] == [tuple(a.shape) for a in native.arch_parameters()]
    for a, b in zip(arch, native.arch_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    state, expected = compat.state_dict(), native.supernet.state_dict()
    assert set(state) == set(expected) | set(names)
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=1e-9, atol=1e-12, msg=key)
    x, _ = batch(99)
    compat.eval()
    native.eval()
    torch.testing.assert_close(compat(x), native(x), rtol=1e-9, atol=1e-12)


def compare_with_fastnas(
    make: Callable[[], nn.Module], method: str, unrolled: bool, names: tuple[str, ...]
) -> nn.Module:
    """Two iterations of the script on ``make()`` and of fastnas on the same method's SearchModel (same
    seed): the results agree, and the architecture moved."""
    torch.manual_seed(0)
    compat = make().double()
    torch.manual_seed(0)
    native = SearchModel.build(method, C=4, layers=3, num_classes=10).double()
    start = [a.detach().clone() for a in compat.arch_parameters()]
    x, _ = batch(0)
    torch.testing.assert_close(compat(x), native(x), rtol=0, atol=0)  # same supernet, same seed
    batches = [(batch(2 * i + 1), batch(2 * i + 2)) for i in range(2)]
    run_script_steps(compat, batches, unrolled)
    run_fastnas_steps(native, batches, unrolled)
    assert_same_search(compat, native, names)
    for a, b in zip(compat.arch_parameters(), start):
        assert (a - b).abs().max() > 1e-3  # the architecture moved (Adam lr 3e-2, two steps)
    return compat


@pytest.mark.parametrize("unrolled", [False, True], ids=["first-order", "second-order"])
def test_the_darts_script_steps_search_as_fastnas_darts(unrolled: bool) -> None:
    compare_with_fastnas(
        lambda: Network(4, 10, 3, nn.CrossEntropyLoss()),
        "darts",
        unrolled,
        ("alphas_normal", "alphas_reduce"),
    )


def test_a_darts_style_second_order_architect_gets_fastnas_alpha_gradients() -> None:
    model = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    model._loss(*batch(1)).backward()  # one real step: every weight has a momentum buffer
    optimizer.step()
    optimizer.zero_grad()
    train, valid, eta = batch(2), batch(3), 0.025
    ours, _ = unrolled_arch_gradients(model.search, train, valid, eta, optimizer)
    theirs = Architect(model).unrolled_gradients(train, valid, eta, optimizer)
    assert len(theirs) == 2
    for a, b in zip(ours, theirs):
        assert a.abs().max() > 1e-6  # a real gradient
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def darts_genotype_rule(weights: torch.Tensor, steps: int = 4) -> list[tuple[str, int]]:
    """The DARTS rule (Liu, Simonyan & Yang, ICLR 2019, section 2.4) on op weights ``[14, 8]``: per node,
    the 2 incoming edges with the largest non-``none`` weight, each with its best non-``none`` op."""
    none = DARTS_OPS.index("none")
    gene, start = [], 0
    for node in range(steps):
        rows = weights[start : start + node + 2]
        best = [max((float(w), k) for k, w in enumerate(row) if k != none) for row in rows]
        kept = sorted(range(node + 2), key=lambda j: -best[j][0])[:2]
        gene += [(DARTS_OPS[best[j][1]], j) for j in kept]
        start += node + 2
    return gene


def test_the_published_rule_on_alphas_normal_and_reduce_gives_genotype() -> None:
    model = tiny()
    for seed in range(5):
        torch.manual_seed(seed)
        with torch.no_grad():
            for alpha in model.arch_parameters():
                alpha.copy_(torch.randn_like(alpha))
        genotype = model.genotype()
        assert isinstance(genotype, Genotype)
        normal = sorted(darts_genotype_rule(torch.softmax(model.alphas_normal.detach(), -1)))
        reduce = sorted(darts_genotype_rule(torch.softmax(model.alphas_reduce.detach(), -1)))
        assert sorted((op, j) for op, j in genotype.normal) == normal
        assert sorted((op, j) for op, j in genotype.reduce) == reduce


def test_parameters_are_the_weights_only_as_in_darts() -> None:
    model = Network(16, 10, 8, nn.CrossEntropyLoss())
    assert sum(p.numel() for p in model.parameters()) == 1_930_618  # the DARTS code's count, no alphas
    ids = {id(p) for p in model.parameters()}
    assert not ids & {id(a) for a in model.arch_parameters()}
    assert model._arch_parameters == [model.alphas_normal, model.alphas_reduce]
    assert model.alphas_normal.shape == (14, 8)
    names = [n for n, _ in model.named_parameters()]
    assert names[0].startswith("stem.") and names[-1].startswith("classifier.")
    assert all(n.split(".")[0] in ("stem", "cells", "classifier") for n in names)


def test_sgd_over_parameters_leaves_the_alphas_alone() -> None:
    model = tiny()
    before = [a.detach().clone() for a in model.arch_parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=0.1)
    for seed in range(2):
        optimizer.zero_grad()
        model._loss(*batch(seed)).backward()
        optimizer.step()
    assert all(a.grad is not None for a in model.arch_parameters())  # the loss reaches them...
    assert all(torch.equal(a, b) for a, b in zip(model.arch_parameters(), before))  # ...SGD does not


def test_new_copies_the_architecture_and_state_dict_round_trips() -> None:
    model = tiny()
    with torch.no_grad():
        model.alphas_normal.normal_()
    other = model.new()
    assert torch.equal(other.alphas_normal, model.alphas_normal)
    assert other.alphas_normal is not model.alphas_normal
    assert next(other.parameters()).dtype == torch.float64
    other.load_state_dict(model.state_dict())
    x, _ = batch(4)
    model.eval()
    other.eval()
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    state = model.state_dict()
    assert {"alphas_normal", "alphas_reduce"} <= set(state)
    assert not [k for k in state if k.startswith("search.")]  # published names only


def test_state_dict_names_hold_inside_a_wrapper_and_missing_keys_are_named() -> None:
    """``nn.DataParallel(model).state_dict()`` (the scripts' ``utils.save``) calls the network's
    ``state_dict`` with a prefix: the published names keep it, and load back."""
    model = tiny()
    wrapper = nn.ModuleDict({"module": model})
    state = wrapper.state_dict()
    assert "module.alphas_normal" in state and "module.stem.0.weight" in state
    assert not [k for k in state if "search." in k]
    with torch.no_grad():
        model.alphas_reduce.add_(1.0)
    wrapper.load_state_dict(state)
    torch.testing.assert_close(model.alphas_reduce, state["module.alphas_reduce"], rtol=0, atol=0)
    del state["module.alphas_normal"], state["module.classifier.bias"]
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "module.alphas_normal", '):
        wrapper.load_state_dict(state)
    missing = wrapper.load_state_dict(state, strict=False).missing_keys
    assert sorted(missing) == ["module.alphas_normal", "module.classifier.bias"]


def test_method_and_executor_are_keyword_arguments() -> None:
    pc = tiny(method="pc-darts")
    assert len(pc.arch_parameters()) == 4  # alphas, then PC-DARTS' edge-normalisation betas
    assert pc.arch_parameters()[2].shape == (14,)
    assert {"betas_normal", "betas_reduce"} <= set(pc.state_dict())
    reference, fast = tiny(), tiny(executor="fast")
    fast.load_state_dict(reference.state_dict())
    x, _ = batch(5)
    torch.testing.assert_close(fast(x), reference(x), rtol=1e-9, atol=1e-10)
    second = tiny(order=2)
    assert second.search.algorithm.order == 2


def test_pdarts_own_network_arguments_point_to_the_pdarts_module() -> None:
    """P-DARTS' ``Network(..., switches_normal, switches_reduce, p)`` is not DARTS': say where to go."""
    switches = [[True] * 8 for _ in range(14)]
    with pytest.raises(ConfigError, match=r"switches_normal, switches_reduce.*fastnas\.compat\.pdarts"):
        Network(4, 10, 3, nn.CrossEntropyLoss(), switches_normal=switches, switches_reduce=switches)
    with pytest.raises(ConfigError, match=r"p=.*fastnas\.compat\.pdarts"):
        Network(4, 10, 3, nn.CrossEntropyLoss(), p=0.1)


@pytest.mark.parametrize("name", ["betas_normal", "betas_reduce"])
def test_pcdarts_betas_on_a_darts_network_point_to_the_pcdarts_module(name: str) -> None:
    """A PC-DARTS script that imported the DARTS module fails where it reads its betas, naming the module
    that builds PC-DARTS' supernet; it never searches DARTS' instead without saying so."""
    model = tiny()
    with pytest.raises(WrongNetworkError, match=rf"{name}.*fastnas\.compat\.pcdarts"):
        getattr(model, name)
    with pytest.raises(ConfigError):
        getattr(model, name)
    assert not hasattr(model, name)  # an AttributeError too
    assert getattr(tiny(method="pc-darts"), name).shape == (14,)


def test_pdarts_calls_on_a_darts_network_point_to_the_pdarts_module() -> None:
    model = tiny()
    model.p = 0.3  # P-DARTS' script sets the rate, then calls update_p()
    with pytest.raises(WrongNetworkError, match=r"update_p.*fastnas\.compat\.pdarts"):
        model.update_p()
    with pytest.raises(WrongNetworkError, match=r"switches_normal.*fastnas\.compat\.pdarts"):
        _ = model.switches_normal
    with pytest.raises(AttributeError, match="no attribute 'unknown'") as info:
        _ = model.unknown
    assert not isinstance(info.value, WrongNetworkError)
