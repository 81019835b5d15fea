"""``model_search.Network`` of the PC-DARTS code (Xu et al., "PC-DARTS: Partial Channel Connections for
Memory-Efficient Architecture Search", ICLR 2020), backed by fastnas's PC-DARTS.

A PC-DARTS ``train_search.py`` / ``architect.py`` keeps working when its import changes to::

    from fastnas.compat.pcdarts import Network
    model = Network(args.init_channels, CIFAR_CLASSES, args.layers, criterion)

The constructor is PC-DARTS' (``C, num_classes, layers, criterion, steps=4, multiplier=4,
stem_multiplier=3``) and so is the supernet: fastnas's ``pc-darts`` method
(:mod:`fastnas.algorithms.pcdarts`), i.e. partial channel connections (only the first ``1/K`` of an
edge's channels, ``K = 4``, enter its mixed op; the rest bypass it, 2x2-max-pooled on a stride-2 edge;
the two parts are concatenated and channel-shuffled in ``K`` groups) and edge normalisation (node ``j``
weighs its incoming edge ``(i, j)`` by ``softmax_i(beta)`` over them, and that weight scales the whole
edge output). ``arch_parameters()`` is PC-DARTS' list ``[alphas_normal, alphas_reduce, betas_normal,
betas_reduce]`` (``[14, 8]``, ``[14, 8]``, ``[14]``, ``[14]``, all ``1e-3 * randn`` at the start), and
``genotype()`` is PC-DARTS' rule: per node the two incoming edges with the largest non-``none`` product of
edge weight and op weight, each with its best non-``none`` op.

Everything else is :mod:`fastnas.compat.darts`' interface: ``_loss``, ``new()``, ``parameters()`` (the
weights only), ``state_dict()`` / ``load_state_dict()`` with the weights and the four architecture
parameters under their names, so PC-DARTS' first- and second-order architect runs unchanged. Keyword
arguments: ``executor`` (``"fast"``), ``in_channels``, ``partial_k`` (default 4) and the method's options
(``partial_bypass="avg"``, ``arch_start_epoch`` ... as in ``fastnas search --method pc-darts --help``).
Unlike the original, ``new()`` and the model follow the device of the weights (no ``.cuda()`` inside).
"""

from __future__ import annotations

from fastnas.compat._base import DartsConstructor

__all__ = ["Network"]


class Network(DartsConstructor):
    """PC-DARTS' search network with fastnas underneath (see the module docstring)."""

    module_name = "fastnas.compat.pcdarts"
    method_title = "PC-DARTS"
    fixed_method = "pc-darts"
