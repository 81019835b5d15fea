"""Drop-in replacements for the search networks of DARTS-era research code: a script keeps running when
its ``from model_search import Network`` becomes

- ``from fastnas.compat.darts import Network`` (DARTS, Liu, Simonyan & Yang, ICLR 2019),
- ``from fastnas.compat.pcdarts import Network`` (PC-DARTS, Xu et al., ICLR 2020), or
- ``from fastnas.compat.pdarts import Network`` (P-DARTS, Chen, Xie, Wu & Tian, ICCV 2019).

Each takes its original's constructor arguments and answers the calls its scripts make; a call that only
another method's scripts make is a clear error naming the module to import instead."""
