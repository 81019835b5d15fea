"""``model_search.Network`` of the DARTS code (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture
Search", ICLR 2019), backed by fastnas.

A DARTS-era ``train_search.py`` / ``architect.py`` keeps working when its import changes to::

    from fastnas.compat.darts import Network
    model = Network(args.init_channels, CIFAR_CLASSES, args.layers, criterion)

What the DARTS scripts call is here: ``forward(x)``, ``_loss(x, target)``, ``arch_parameters()`` /
``_arch_parameters`` (``[alphas_normal, alphas_reduce]``, ``[14, 8]`` each), ``new()`` (a fresh network
with the same alphas, as the second-order architect builds its virtual model), ``genotype()`` and
``_criterion``. As in DARTS, ``parameters()`` / ``named_parameters()`` yield the weights only (the alphas are
not trained by the weight optimiser), and ``state_dict()`` / ``load_state_dict()`` hold the weights under
the names ``named_parameters()`` gives (``stem.*``, ``cells.*``, ``classifier.*``) plus the two alphas
(``alphas_normal``, ``alphas_reduce``), so the architect's ``_construct_model_from_theta``
(``state_dict()`` updated with ``named_parameters()`` keys, then ``load_state_dict``) works unchanged.
Parameter names below ``cells.N`` are fastnas's (``edges.E.ops.K``), not DARTS's ``_ops.E._ops.K``.

The scripts of the DARTS successors import their own module: PC-DARTS' (betas, partial channels)
:mod:`fastnas.compat.pcdarts`, P-DARTS' (switches, skip-connect dropout ``p``) :mod:`fastnas.compat.pdarts`.
What only their scripts do is a clear error here, naming that module: P-DARTS' ``switches_normal`` /
``switches_reduce`` / ``p`` arguments (a :class:`~fastnas.errors.ConfigError`), and reading PC-DARTS'
``betas_normal`` / ``betas_reduce`` or calling P-DARTS' ``update_p()`` on a network that lacks them
(:class:`~fastnas.compat._base.WrongNetworkError`). PC-DARTS' constructor and the calls of its CIFAR
``train_search.py`` / ``architect.py`` are DARTS' own, so such a script that imports this module instead of
:mod:`fastnas.compat.pcdarts` fails only where it reads the betas by name.

Keyword arguments choose the executor (``"fast"``: the batched edges and fused kernels), partial
channels (``partial_k``) and the method's options (``Network(16, 10, 8, criterion, order=2,
executor="fast")``); ``method=`` builds another fastnas method behind the DARTS interface
(``"pc-darts"`` equals :mod:`fastnas.compat.pcdarts`' network, ``"pdarts"`` gives one P-DARTS stage over
every op, with ``[14, 8]`` alphas).
"""

from __future__ import annotations

from fastnas.compat._base import DartsConstructor

__all__ = ["Network"]


class Network(DartsConstructor):
    """The DARTS search network with fastnas underneath (see the module docstring)."""

    module_name = "fastnas.compat.darts"
