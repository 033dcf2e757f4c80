"""tunesmith: fine-tune pre-trained models on your own data, with the practices that work built in.

    import tunesmith
    result = tunesmith.finetune("config.yaml")
    print(result.baseline["accuracy"], "->", result.final["accuracy"])
"""

from tunesmith.config import RunConfig, load_config
from tunesmith.errors import ConfigError, DataError, ModelSourceError, RunDirError, TunesmithError
from tunesmith.run import RunResult, evaluate, finetune, inspect, predict

__all__ = [
    "ConfigError", "DataError", "ModelSourceError", "RunConfig", "RunDirError", "RunResult", "TunesmithError",
    "evaluate", "finetune", "inspect", "load_config", "predict",
]
__version__ = "0.1.0"
