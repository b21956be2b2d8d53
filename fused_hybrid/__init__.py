"""fused_hybrid: fused optimizers for hybrid adaptive/SGD training.

Drop-in torch.optim optimizers (Adam, AdamW, SGD, RMSprop, Adagrad) and the hybrid rules that bridge Adam and SGD: SWATS,
Padam, Adam-Clip, AdaBound, MAS, ND-Adam, and per-group rules (``Hybrid``). ``backends()`` says which
implementations can run here.
"""
from . import _ext, _meta  # noqa: F401  (fh._ext says whether the extension loaded)
from .backends import BackendUnavailableError, backends
from .optimizer import HybridOptimizer
from .optimizers import MAS, SGD, SWATS, AdaBound, Adagrad, Adam, AdamClip, AdamW, Hybrid, NDAdam, Padam, RMSprop

__all__ = ["Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Padam", "AdamClip", "AdaBound", "SWATS", "MAS", "NDAdam", "Hybrid",
           "HybridOptimizer", "backends", "BackendUnavailableError"]
__version__ = "0.1.0"

_meta.register()
