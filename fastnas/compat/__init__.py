"""Drop-in replacements for the search networks of DARTS-era research code: a script keeps running when
its ``from model_search import Network`` becomes

- ``from fastnas.compat.darts import Network`` (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture
  Search", ICLR 2019),
- ``from fastnas.compat.pcdarts import Network`` (Xu et al., "PC-DARTS: Partial Channel Connections for
  Memory-Efficient Architecture Search", ICLR 2020),
- ``from fastnas.compat.pdarts import Network`` (Chen, Xie, Wu & Tian, "Progressive Differentiable
  Architecture Search: Bridging the Depth Gap between Search and Evaluation", ICCV 2019), or
- ``from fastnas.compat.ddsas import Network`` (Yang et al., "DDSAS: Dynamic and Differentiable
  Space-Architecture Search", ACML 2021).

Each takes its original's constructor arguments and answers the calls its scripts make; a call that only
another method's scripts make is a clear error naming the module to import instead."""
