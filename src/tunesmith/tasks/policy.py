"""Policy: fine-tune a pre-trained reinforcement-learning policy to a changed environment (Stable-Baselines3).

`model.source` is a saved SB3 model zip (read without unpickling: models/policy.py), a policy run
directory (or its `best/`), or `new` for a fresh policy. `policy.environment` is the target: a
Gymnasium id with constructor keywords, physics attributes, observation noise and reward scale
(models/environments.py). The policy trains by its own algorithm (PPO or DQN) in rounds of
`policy.steps_per_round` environment steps (engine/fitted.py; `training.num_train_epochs` rounds), and
after every round it is evaluated on `policy.eval_episodes` seeded episodes: the rows of this task
are episodes, each row's output its return. `mean_return` selects the best round; the source policy
on the target environment is the `baseline` ("before"), and it competes: if no round beats it, the
source is kept. With `policy.source_environment`, every evaluation also plays the source environment
(`source_mean_return`: forgetting).

Layer groups run by depth over both towers (`stem` holds the first hidden layer of the actor and of
the critic, which reads the observation, then `layer1`, ..., and `heads` the action and value heads), so `strategy.freeze`, gradual unfreezing and
`strategy.layer_lr_decay` act as for every task. A changed observation space gives `stem` new
input weights, a changed action space a new action head; `inspect` and the model card name them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.labelled import LabelledRows
from tunesmith.errors import ConfigError, DataError, ModelSourceError
from tunesmith.models.environments import EnvironmentSpec, make_env, require
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.models.policy import (
    SPEC_FILE,
    ZIP_FILE,
    Episode,
    PolicyModel,
    algorithm_class,
    grafted,
    read_saved,
)
from tunesmith.tasks import register_task

log = logging.getLogger("tunesmith")

EVAL_SEED = 10_000  # evaluation episodes reset with seeds from here: never those training draws from


class PolicyConfig(Section):
    algorithm: Literal["ppo", "dqn"] = "ppo"
    """Stable-Baselines3 algorithm: `ppo` (any action space) or `dqn` (discrete actions)."""
    environment: EnvironmentSpec = Field(default_factory=EnvironmentSpec)
    """The target environment, the one fine-tuning adapts to."""
    source_environment: EnvironmentSpec | None = None
    """The environment the source policy learnt; every evaluation also plays it (`source_mean_return`,
    forgetting). `null`: the one a policy run directory recorded, else none."""
    steps_per_round: int = Field(5000, ge=1)
    """Environment steps trained per round; a round is an epoch in the records."""
    eval_episodes: int = Field(10, ge=1)
    """Episodes played, deterministically, at every evaluation (the validation rows)."""
    n_envs: int = Field(8, ge=1)
    """Environments stepped side by side while training."""
    net_arch: list[int] = Field(default=[64, 64], min_length=1)
    """Hidden layer sizes of a `new` policy (actor and critic alike)."""
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    """The algorithm's own constructor arguments (`n_steps`, `batch_size`, `gamma`, `n_epochs`,
    `exploration_fraction`, ...) over the source's; `training.learning_rate` is the rate."""
    value_warmup_steps: int = Field(2000, ge=0)
    """PPO, from a pre-trained source: the critic trains alone (the actor frozen) for this many of the
    first round's steps, so the source's values, learnt on another environment, do not steer the actor."""
    kl_coef: float = Field(0.0, ge=0)
    """PPO, from a pre-trained source: weight of a KL penalty pulling the policy toward the source
    policy on the rollout's states, decaying linearly to zero over `kl_decay_steps`; 0 (the default)
    is off. It holds a policy near its source (less forgetting, less collapse) and slows its first
    rounds; on the heavy pole (benchmarks/RESULTS.md, 3 seeds) 0.5 with the default decay gave the
    steadiest curves and 0.1 the worst, so try it where a fine-tune collapses."""
    kl_decay_steps: int | None = Field(20_000, ge=1)
    """Steps over which the KL weight falls to zero; `null`: it stays constant."""
    trust_pickles: bool = False
    """Let SB3 unpickle a model zip whose `policy_kwargs` exist only as a pickle (a custom class)."""

    @property
    def losses_comparable(self) -> bool:
        """No over-fitting watch (report/overfitting.py): the training loss is the algorithm's (PPO's
        clipped objective, DQN's TD error) and the validation loss the evaluation episodes' actor-critic
        loss, so their gap means nothing; a return falling after the best round is kept out of best/."""
        return False


@register_task("policy")
class PolicyTask:
    name: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]] = ("mean_return", "std_return", "mean_length", "source_mean_return")
    minimize = ("loss", "std_return")
    settings: ClassVar[type[Section] | None] = PolicyConfig
    supports_activation_cache: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {
        "model.source": "new", "training.learning_rate": 3e-4, "training.num_train_epochs": 10,
        "training.per_device_eval_batch_size": 1000, "training.weight_decay": 0.0}

    def __init__(self, config: RunConfig):
        self.config = config
        self.options: PolicyConfig = config.task_settings
        self.train_rows: LabelledRows | None = None
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []
        self.truncated = 0
        self.new_tensors: list[str] = []
        self.source = self._source()
        self.start_competes = self.source is not None and config.model.pretrained
        self.starting_point = "source policy" if self.start_competes else "untrained policy"
        self.source_env = self.options.source_environment or self._recorded_environment()

    def _source(self) -> Path | None:
        """The source's zip, or None for `new`."""
        source = self.config.model.source
        if source == "new":
            return None
        path = Path(source).expanduser()
        for candidate in (path, path / ZIP_FILE, path / "best" / ZIP_FILE):
            if candidate.is_file():
                return candidate
        raise ModelSourceError(f"model.source: {source!r} is no Stable-Baselines3 model zip and no policy run "
                               f"directory (or its best/, holding {ZIP_FILE}); set model.source: new for a new policy")

    def _recorded_environment(self) -> EnvironmentSpec | None:
        spec = None if self.source is None else self.source.parent / SPEC_FILE
        if spec is None or not spec.is_file():
            return None
        recorded = EnvironmentSpec(**json.loads(spec.read_text(encoding="utf-8"))["environment"])
        return None if recorded == self.options.environment else recorded  # the same one: nothing to forget

    # ---- rows: episodes --------------------------------------------------------------------
    def preflight(self) -> None:
        if self.config.data.train or self.config.data.validation:
            raise ConfigError(["data: the policy task learns from its environment (policy.environment), not from "
                               "files; remove data.train / data.validation"])
        env = make_env(self.options.environment, "policy.environment")
        if self.options.algorithm == "dqn" and not hasattr(env.action_space, "n"):
            raise ConfigError([f"policy.algorithm: dqn needs discrete actions; {self.options.environment.id} has "
                               f"{env.action_space}; use ppo"])
        if self.source_env is not None:
            source = make_env(self.source_env, "policy.source_environment")
            differ = (source.observation_space.shape != env.observation_space.shape
                      or source.action_space != env.action_space)
            if differ and self.options.source_environment is not None:
                raise ConfigError([f"policy.source_environment: {self.source_env.id} has other observation or "
                                   f"action spaces than {self.options.environment.id}; one policy cannot play "
                                   "both, so forgetting cannot be measured; remove it"])
            if differ:  # recorded by the source run: the policy now has new layers for the new spaces
                self.source_env = None
        if self.source is not None:
            read_saved(self.source, self.options.algorithm, self.options.trust_pickles)
        seeds = [EVAL_SEED + i for i in range(self.options.eval_episodes)]
        described = self.options.environment.describe()
        # The training rows are the training environments, each with the seed make_vec_env gives it.
        train_seeds = [self.config.training.seed + i for i in range(self.options.n_envs)]
        self.train_rows = LabelledRows(described, {"seed": train_seeds}, train_seeds, list(range(1, len(train_seeds) + 1)))
        self.eval_rows = LabelledRows(described, {"seed": seeds}, seeds, list(range(1, len(seeds) + 1)),
                                      columns={"seed": [str(s) for s in seeds]})

    def unlabelled_rows(self, path: str) -> LabelledRows:
        raise DataError(f"{path}: a policy plays episodes instead of reading rows; `tunesmith evaluate` plays "
                        "policy.eval_episodes of them and writes each one's return")

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> list[dict[str, Any]]:
        return [{"seed": s} for s in rows.inputs["seed"]]

    def lengths(self, dataset: Any) -> list[int] | None:
        return None

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seeds = torch.tensor([f["seed"] for f in features], dtype=torch.long)
        return {"seeds": seeds, "labels": seeds}

    # ---- model -----------------------------------------------------------------------------
    def build_model(self) -> PolicyModel:
        o, t = self.options, self.config.training
        cls = algorithm_class(o.algorithm)
        hyper: dict[str, Any] = {"policy_kwargs": {"net_arch": list(o.net_arch)}}
        weights = None
        if self.source is not None:
            hyper, weights = read_saved(self.source, o.algorithm, o.trust_pickles)
        vec_env = require("stable_baselines3.common.env_util").make_vec_env(
            lambda: make_env(o.environment, "policy.environment"), n_envs=o.n_envs, seed=t.seed)
        # SB3 runs small MLP policies faster on the CPU than on a GPU (its own advice), so it stays there.
        algo = cls("MlpPolicy", vec_env, learning_rate=t.learning_rate, seed=t.seed, device="cpu", verbose=0,
                   **{**hyper, **o.hyperparameters})
        pretrained = weights is not None and self.config.model.pretrained
        if weights is not None and pretrained:
            self.new_tensors = grafted(algo, weights)
            if self.new_tensors:
                log.info("new, not from the source (the spaces differ): %s", ", ".join(self.new_tensors))
        return PolicyModel(o.algorithm, algo, o, self.new_tensors, pretrained)

    def load_trained(self) -> PolicyModel:
        model = self.build_model()
        if self.source is None or self.new_tensors:
            raise ModelSourceError(f"model.source: {self.config.model.source!r} is no trained policy for "
                                   f"{self.options.environment.id}; name a policy run directory")
        return model

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        """By depth: `stem` and `layer<i>` hold the i-th hidden layer of every tower, `heads` the output layers."""
        assert isinstance(model, PolicyModel)
        policy = model.policy
        if model.algorithm == "dqn":
            towers, heads = [list(policy.q_net.q_net)[:-1]], [("policy.q_net.q_net", list(policy.q_net.q_net)[-1])]
            prefix = ["policy.q_net.q_net"]
        else:
            towers = [list(policy.mlp_extractor.policy_net), list(policy.mlp_extractor.value_net)]
            prefix = ["policy.mlp_extractor.policy_net", "policy.mlp_extractor.value_net"]
            heads = [("policy.action_net", policy.action_net), ("policy.value_net", policy.value_net)]
        groups = []
        depth = max(sum(1 for m in tower if list(m.parameters())) for tower in towers)
        for i in range(depth):
            groups.append(_group("stem" if i == 0 else f"layer{i}", _layer(prefix, towers, i)))
        head = _group("heads", heads)
        extra = [(n, p) for n, p in model.named_parameters() if n.startswith("policy.log_std")]
        head.params += extra
        name = "policy.q_net.features_extractor" if model.algorithm == "dqn" else "policy.features_extractor"
        extractor = policy.q_net.features_extractor if model.algorithm == "dqn" else policy.features_extractor
        stem = [_group("stem_features", [(name, extractor)])] if list(extractor.parameters()) else []  # a CNN
        return stem + groups + [head]

    # ---- evaluation ------------------------------------------------------------------------
    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        assert isinstance(model, PolicyModel)
        seeds = batch["seeds"].tolist()
        played = model.episodes(self.options.environment, seeds, "policy.environment")
        source = model.episodes(self.source_env, seeds, "policy.source_environment") if self.source_env else None
        return [{"episode": e, "return": e.total, "length": len(e.rewards),
                 **({"source_return": source[i].total} if source else {})} for i, e in enumerate(played)]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        assert isinstance(model, PolicyModel)
        outputs = self.forward(model, batch)
        with torch.enable_grad() if model.training else torch.no_grad():
            losses = torch.stack([model.episode_loss(o["episode"]) for o in outputs])
        return losses.mean(), outputs

    def batch_outputs(self, outputs: Any, batch: dict[str, torch.Tensor]) -> list[Any]:
        return [{k: v for k, v in o.items() if k != "episode"} for o in outputs]

    def row_outputs(self, rows: LabelledRows, examples: list[Any]) -> list[Any]:
        return examples

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        returns = np.array([o["return"] for o in outputs], dtype=float)
        scores = {"mean_return": float(returns.mean()) if len(returns) else float("nan"),
                  "std_return": float(returns.std()) if len(returns) else float("nan"),
                  "mean_length": float(np.mean([o["length"] for o in outputs])) if outputs else float("nan")}
        if outputs and "source_return" in outputs[0]:
            scores["source_mean_return"] = float(np.mean([o["source_return"] for o in outputs]))
        return scores

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        return [{"seed": s, **o} for s, o in zip(rows.inputs["seed"], outputs)]

    # ---- saving ----------------------------------------------------------------------------
    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        assert isinstance(model, PolicyModel)
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        if weights is not None:  # the engine's gathered state dict: keys under `policy.`
            own = {k: v.clone() for k, v in model.policy.state_dict().items()}
            model.policy.load_state_dict({k.removeprefix("policy."): v for k, v in weights.items()
                                          if k.startswith("policy.")})
        # Saved with an optimizer of SB3's own shape (one param group, fresh state) so that plain SB3
        # loads the zip: its loader refuses an optimizer state with tunesmith's per-layer groups.
        tuned = model.policy.optimizer
        sb3_params = model.policy.q_net.parameters() if hasattr(model.policy, "q_net") else model.policy.parameters()
        model.policy.optimizer = torch.optim.Adam(sb3_params, lr=model.algo.lr_schedule(1.0),
                                                  **model.policy.optimizer_kwargs)
        try:
            model.algo.save(out / ZIP_FILE)
        finally:
            model.policy.optimizer = tuned
        if weights is not None:
            model.policy.load_state_dict(own)
        spec = {"algorithm": model.algorithm, "environment": self.options.environment.model_dump(),
                "net_arch": model.algo.policy_kwargs.get("net_arch"), "new_tensors": self.new_tensors}
        (out / SPEC_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")

    def describe(self) -> dict[str, Any]:
        o = self.options
        steps = o.steps_per_round * int(np.ceil(self.config.training.num_train_epochs))
        return {"train": {"rows": o.n_envs, "unit": "environments", "source": o.environment.describe(), "steps": steps},
                "validation": {"rows": o.eval_episodes, "unit": "episodes", "source": o.environment.describe()},
                "source": str(self.source) if self.source else "new policy",
                "source_environment": self.source_env.describe() if self.source_env else None,
                "algorithm": o.algorithm, "new_tensors": self.new_tensors,
                "against_collapse": {"value_warmup_steps": o.value_warmup_steps, "kl_coef": o.kl_coef,
                                     "kl_decay_steps": o.kl_decay_steps} if self.start_competes else None}

    def card_usage(self) -> str:
        cls = self.options.algorithm.upper()
        return (f"`best/{ZIP_FILE}` is a Stable-Baselines3 model:\n\n```python\nimport gymnasium as gym\n"
                f"from stable_baselines3 import {cls}\n\nmodel = {cls}.load(\"best/{ZIP_FILE}\")\n"
                f"env = gym.make(\"{self.options.environment.id}\")\nobs, _ = env.reset(seed=0)\n"
                "action, _ = model.predict(obs, deterministic=True)\n```\n\nThe environment variant it was "
                f"trained on: {self.options.environment.describe()} (`best/{SPEC_FILE}`).")


def _layer(prefixes: list[str], towers: list[list[nn.Module]], depth: int) -> list[tuple[str, nn.Module]]:
    """The `depth`-th module with parameters of each tower, with its qualified name."""
    found = []
    for prefix, tower in zip(prefixes, towers):
        with_params = [(f"{prefix}.{j}", m) for j, m in enumerate(tower) if list(m.parameters())]
        if depth < len(with_params):
            found.append(with_params[depth])
    return found


def _group(name: str, modules: list[tuple[str, nn.Module]]) -> LayerGroup:
    return LayerGroup(name, [m for _, m in modules],
                      [(f"{prefix}.{n}", p) for prefix, m in modules for n, p in m.named_parameters()])
