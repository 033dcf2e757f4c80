"""Choosing the fine-tuning settings: hyper-parameter search and the learning-rate range test.

`tune` (`search.py`) runs an Optuna study over the keys in the config's `search.space`, each
trial an ordinary fine-tuning run, with pruning, a resumable study and a results table
(`results.py`). `lr_find` (`lr_finder.py`) raises the learning rate exponentially, step by step, on a
throwaway copy of the model and suggests a rate from the loss curve. The
package is called `tuning` so that `tunesmith.tune`, the function, does not shadow it.
"""

from tunesmith.tuning.lr_finder import LRFindResult, lr_find
from tunesmith.tuning.search import TuneResult, tune

__all__ = ["LRFindResult", "TuneResult", "lr_find", "tune"]
