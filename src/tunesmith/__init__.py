"""tunesmith: fine-tune pre-trained models on your own data, with the practices that work built in.

    import tunesmith
    result = tunesmith.finetune("config.yaml")
    print(result.baseline["accuracy"], "->", result.final["accuracy"])
"""

from tunesmith.adaptation import AdaptResult, adapt
from tunesmith.comparison import CompareResult, compare
from tunesmith.comparison.update import UpdateResult, update
from tunesmith.config import RunConfig, load_config
from tunesmith.errors import ConfigError, DataError, ModelSourceError, RunDirError, TunesmithError
from tunesmith.run import RunResult, evaluate, export_onnx, finetune, inspect, predict
from tunesmith.tuning import LRFindResult, TuneResult, lr_find, tune

__all__ = [
    "CompareResult", "ConfigError", "DataError", "ModelSourceError", "RunConfig", "RunDirError", "RunResult",
    "TunesmithError", "LRFindResult", "TuneResult", "UpdateResult", "AdaptResult",
    "adapt", "compare", "lr_find", "tune", "evaluate", "export_onnx", "finetune", "inspect", "load_config", "predict", "update",
]
__version__ = "0.1.0"

import tunesmith.tasks  # noqa: E402 - last: every task registers its config section before any config loads

tunesmith.tasks.load_all()
