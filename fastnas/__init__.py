"""fastnas: fast, faithful differentiable neural architecture search in PyTorch.

The drop-in backend::

    import fastnas
    model = fastnas.SearchModel.build("darts", C=16, layers=8, num_classes=10)
    loss = model.loss(x, y)                 # weights level
    model.loss(x_val, y_val, level="arch")  # architecture level
    model.genotype()                        # DARTS derivation rule

and the whole search loop: ``fastnas.run_search(fastnas.SearchConfig(dataset="digits", epochs=2))``.
Retraining a genotype: ``fastnas.NetworkCIFAR(36, 10, 20, True, fastnas.load_genotype("DARTS_V2"))`` and
``fastnas.run_train(fastnas.TrainConfig(genotype="DARTS_V2", dataset="cifar10", data_dir=...))``.

Packages, from the bottom up (each imports only those before it): ``ops`` and ``kernels`` (candidate
operations), ``spaces`` (what can be searched, as data), ``algorithms`` (one module per method),
``nn`` (supernets and evaluation networks), then ``methods`` (the registry pairing each algorithm with
its supernet), ``search_model``, ``train`` (the loops) and ``cli``.
"""

from fastnas.algorithms import SearchAlgorithm
from fastnas.errors import FastnasError
from fastnas.genotype import CellGenotype, Genotype, GenotypeError, load_genotype
from fastnas.methods import METHODS, Method, build_algorithm, get_method
from fastnas.nn import NetworkCIFAR, NetworkImageNet, Supernet
from fastnas.ops import DARTS_OPS, available_ops, register_op
from fastnas.search_model import SearchModel
from fastnas.spaces import DartsSpace, build_space
from fastnas.train import SearchConfig, SearchResult, resume_search, run_search
from fastnas.train.retrain import TrainResult, evaluate_checkpoint, resume_train, run_train
from fastnas.train.retrain_config import TrainConfig

__version__ = "0.1.0"

__all__ = [
    "DARTS_OPS",
    "METHODS",
    "CellGenotype",
    "DartsSpace",
    "FastnasError",
    "Genotype",
    "GenotypeError",
    "Method",
    "NetworkCIFAR",
    "NetworkImageNet",
    "SearchAlgorithm",
    "SearchConfig",
    "SearchModel",
    "SearchResult",
    "Supernet",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "available_ops",
    "build_algorithm",
    "build_space",
    "evaluate_checkpoint",
    "get_method",
    "load_genotype",
    "register_op",
    "resume_search",
    "resume_train",
    "run_search",
    "run_train",
]
