"""Stable-Baselines3 policies as the policy task trains them: read safely, grown onto a new
environment, trained round by round with layer groups, and kept from collapsing.

A saved SB3 model is a zip of a JSON `data` file (hyperparameters; objects it cannot write as JSON are
cloudpickled inside it) and `policy.pth` (the weights). `read_saved` takes only the plain JSON values
and loads the weights with `torch.load(weights_only=True)`: no pickle from the file runs. A
`policy_kwargs` that exists only as a pickle (a custom activation or network class) is refused unless
`policy.trust_pickles` says to use SB3's own loader. The weights then go into a new model built for
the target environment; tensors whose shape differs (the input layer for a changed observation
space, the action head for a changed action space) keep their fresh initialisation and are named.

Against the collapse users see when RL resumes on a pre-trained policy (SB3#543), PPO from a
pre-trained source has two guards: the critic trains alone for `value_warmup_steps` (on by default: its
values are the source environment's), and a KL penalty pulls the policy toward the source policy,
decaying to zero over `kl_decay_steps` (off by default: it slowed adaptation in the benchmark).
The KL term's gradient is added in each PPO optimizer step (`StepHookAdam`), on observations drawn
from the same rollout, so SB3's own update runs unchanged.
"""

from __future__ import annotations

import copy
import inspect
import io
import json
import re
import zipfile
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tunesmith.errors import ModelSourceError
from tunesmith.models.environments import EnvironmentSpec, make_env, require

ZIP_FILE = "policy.zip"  # in best/: loads with plain SB3, `PPO.load("best/policy.zip")`
SPEC_FILE = "policy.json"  # in best/: the algorithm, the environment it was trained on, tunesmith's settings
ALGORITHMS = ("ppo", "dqn")
_MARKERS = {"ppo": ("n_epochs", "clip_range"), "dqn": ("target_update_interval", "exploration_fraction")}


def algorithm_class(name: str) -> Any:
    sb3 = require("stable_baselines3")
    return {"ppo": sb3.PPO, "dqn": sb3.DQN}[name]


def read_saved(path: Path, algorithm: str, trust_pickles: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(constructor hyperparameters, policy weights) of an SB3 zip, without unpickling anything.

    Raises:
        ModelSourceError: not an SB3 zip, saved by another algorithm, or holding a pickled
            `policy_kwargs` while `trust_pickles` is off.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
            weights = torch.load(io.BytesIO(archive.read("policy.pth")), map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"{path}: not a Stable-Baselines3 model zip (need `data` and `policy.pth` inside: "
                               f"{exc}); save one with model.save(path)") from None
    saved_by = next((a for a, keys in _MARKERS.items() if all(k in data for k in keys)), None)
    if saved_by != algorithm:
        raise ModelSourceError(f"{path}: saved by {(saved_by or 'another algorithm').upper()}, not "
                               f"{algorithm.upper()}; set policy.algorithm: {saved_by or 'ppo'}")
    kwargs = data.get("policy_kwargs", {})
    if isinstance(kwargs, dict) and ":serialized:" in kwargs:
        if not trust_pickles:
            raise ModelSourceError(f"{path}: its policy_kwargs exist only as a pickle (a custom class); tunesmith "
                                   "does not run pickles from a model file. If you trust the file, set "
                                   "policy.trust_pickles: true")
        kwargs = algorithm_class(algorithm).load(path, device="cpu").policy_kwargs
    accepted = set(inspect.signature(algorithm_class(algorithm).__init__).parameters)
    hyper = {k: v for k, v in data.items() if k in accepted and isinstance(v, (int, float, str, bool, type(None)))
             and k not in ("verbose", "seed", "device", "tensorboard_log", "learning_rate")}
    for key in ("clip_range", "clip_range_vf"):  # a constant schedule is written as its repr
        match = re.search(r"ConstantSchedule\(val=([-0-9.e]+)\)", json.dumps(data.get(key, "")))
        if match:
            hyper[key] = float(match.group(1))
    return {**hyper, "policy_kwargs": _plain(kwargs)}, weights


def _plain(kwargs: dict[str, Any]) -> dict[str, Any]:
    """policy_kwargs as SB3 takes them back (JSON has turned net_arch's tuples into lists)."""
    return {k: v for k, v in kwargs.items() if not (isinstance(v, dict) and ":type:" in v)}


def grafted(algo: Any, weights: dict[str, torch.Tensor]) -> list[str]:
    """Loads the source weights that fit into `algo.policy`; returns the tensors that stay new."""
    own = algo.policy.state_dict()
    fits = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    algo.policy.load_state_dict(fits, strict=False)
    return sorted(k for k in own if k not in fits)


class StepHookAdam(torch.optim.Adam):
    """Adam with per-group rates relative to the one SB3 sets, and a hook run before each step.

    SB3 writes one learning rate into every param group at each update; a group's `lr_scale` (its
    discriminative rate over the head's) is applied on top of it. `before_step` adds extra gradients
    (the KL penalty) after SB3's backward pass and gradient clipping.
    """

    def __init__(self, param_groups: list[dict[str, Any]], **kwargs: Any):
        super().__init__(param_groups, **kwargs)
        self.before_step: Callable[[], None] | None = None

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if self.before_step is not None:
            with torch.enable_grad():
                self.before_step()
        for group in self.param_groups:
            if group.get("_set") != group["lr"]:  # SB3 wrote a new base rate since the last step
                group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
                group["_set"] = group["lr"]
        return super().step(closure)


class PolicyModel(nn.Module):
    """An SB3 algorithm the fitted loop (engine/fitted.py) trains round by round.

    `policy` is SB3's policy module (its parameters are this module's); `source` a frozen copy of
    the starting policy for the KL penalty (None from scratch).
    """

    source: Any  # the frozen starting policy, or None

    def __init__(self, algorithm: str, algo: Any, options: Any, new_tensors: list[str], pretrained: bool):
        super().__init__()
        self.algorithm, self.algo, self.options = algorithm, algo, options
        self.policy = algo.policy
        self.new_tensors = new_tensors
        self.anti_collapse = pretrained and algorithm == "ppo"
        # A plain attribute, not a submodule: the frozen source is no part of this model's parameters or state.
        self.__dict__["source"] = copy.deepcopy(algo.policy).requires_grad_(False) if self.anti_collapse else None
        self.samples_per_round = options.steps_per_round  # environment steps: the "samples" of the throughput
        self._start_steps = 0
        self.warmup_done = 0
        if algorithm == "dqn":  # SB3 copies the online network into the target; no gradient ever reaches it
            self.policy.q_net_target.requires_grad_(False)

    def train_loss(self) -> float | None:
        """SB3's last logged training loss (PPO's total loss, DQN's TD loss), None before any update."""
        value = self.algo.logger.name_to_value.get("train/loss")
        return None if value is None else float(value)

    # ---- training --------------------------------------------------------------------------
    def use_param_groups(self, param_groups: list[dict[str, Any]], head_rate: float) -> None:
        """Replaces SB3's optimizer by one with tunesmith's layer groups and their rates."""
        merged: dict[tuple[float, float], dict[str, Any]] = {}  # one group per rate: Adam steps each group apart
        for group in param_groups:
            key = (group["lr"], group["weight_decay"])
            into = merged.setdefault(key, {**group, "params": [], "lr_scale": group["lr"] / head_rate})
            into["params"] = into["params"] + list(group["params"])
        optimizer = StepHookAdam(list(merged.values()), **self.policy.optimizer_kwargs)  # SB3's eps for the algorithm
        if self.anti_collapse and self.options.kl_coef > 0:
            optimizer.before_step = self._kl_gradient
        self.policy.optimizer = optimizer

    def fit_round(self, train_data: Any, number: int) -> bool:
        steps = self.options.steps_per_round
        if number == 0:
            self._start_steps = self.algo.num_timesteps
            if self.anti_collapse and self.options.value_warmup_steps:
                self.warmup_done = min(self.options.value_warmup_steps, steps)
                with self._actor_frozen():
                    self.algo.learn(self.warmup_done, reset_num_timesteps=False)
                steps -= self.warmup_done
        if steps > 0:
            self.algo.learn(steps, reset_num_timesteps=False)
        return True

    def _actor_frozen(self) -> Any:
        actor = [p for name, p in self.policy.named_parameters() if not name.startswith(("value_net.",
                                                                                          "mlp_extractor.value_net."))]
        return _Frozen(actor)

    def kl_weight(self) -> float:
        done = self.algo.num_timesteps - self._start_steps
        decay = self.options.kl_decay_steps
        return self.options.kl_coef * (max(0.0, 1.0 - done / decay) if decay else 1.0)

    def _kl_gradient(self) -> None:
        weight = self.kl_weight()
        buffer = self.algo.rollout_buffer
        if weight <= 0 or self.source is None or not buffer.full:
            return
        flat = buffer.observations.reshape(-1, *buffer.obs_shape)
        rows = np.random.default_rng(self.algo.num_timesteps).choice(len(flat), min(256, len(flat)), replace=False)
        obs = torch.as_tensor(flat[rows], device=self.algo.device)
        with torch.no_grad():
            target = self.source.get_distribution(obs).distribution
        current = self.policy.get_distribution(obs).distribution
        penalty = weight * torch.distributions.kl_divergence(target, current).mean()
        if penalty.requires_grad:  # the actor trains (not the value warm-up, not frozen by the strategy)
            penalty.backward()

    def load_best(self, folder: Path) -> None:
        _, weights = read_saved(folder / ZIP_FILE, self.algorithm, trust_pickles=False)
        self.policy.load_state_dict(weights)

    # ---- acting ----------------------------------------------------------------------------
    def episodes(self, spec: EnvironmentSpec, seeds: list[int], key: str) -> list[Episode]:
        """One deterministic episode per seed on the environment `spec` makes."""
        env, results = make_env(spec, key), []
        for seed in seeds:
            obs, _ = env.reset(seed=int(seed))
            seen, actions, rewards, done = [], [], [], False
            while not done:
                action, _ = self.algo.predict(obs, deterministic=True)
                seen.append(obs)
                actions.append(action)
                obs, reward, terminated, truncated, _ = env.step(action)
                rewards.append(float(reward))
                done = terminated or truncated
            results.append(Episode(int(seed), np.asarray(seen), np.asarray(actions), np.asarray(rewards)))
        env.close()
        return results

    def episode_loss(self, episode: Episode) -> torch.Tensor:
        """The actor-critic loss of an evaluation episode: the critic's squared error on the discounted
        returns, less the advantage-weighted log-likelihood of the actions taken (DQN: Q(s, a)'s
        squared error on the returns). A real, differentiable measure of how well the policy's
        estimates fit this environment: the value error is what `value_warmup_steps` brings down."""
        gamma = float(self.algo.gamma)
        returns = np.zeros(len(episode.rewards), dtype=np.float32)
        running = 0.0
        for t in range(len(returns) - 1, -1, -1):
            running = float(episode.rewards[t]) + gamma * running
            returns[t] = running
        obs = torch.as_tensor(episode.observations, dtype=torch.float32, device=self.algo.device)
        actions = torch.as_tensor(episode.actions, device=self.algo.device)
        target = torch.as_tensor(returns, device=self.algo.device)
        if self.algorithm == "dqn":
            q = self.policy.q_net(obs).gather(1, actions.long().reshape(-1, 1)).squeeze(1)
            return torch.nn.functional.mse_loss(q, target)
        values, log_prob, _ = self.policy.evaluate_actions(obs, actions)
        values = values.flatten()
        advantage = (target - values).detach()
        return torch.nn.functional.mse_loss(values, target) - (advantage * log_prob).mean()


@dataclass
class Episode:
    """One evaluation episode: its reset seed, and what was seen, done and earned at each step."""

    seed: int
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray

    @property
    def total(self) -> float:
        return float(self.rewards.sum())


class _Frozen:
    """Within the block, `params` do not train; their earlier requires_grad comes back after it."""

    def __init__(self, params: list[nn.Parameter]):
        self.params, self.before = params, [p.requires_grad for p in params]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: Any) -> None:
        for p, flag in zip(self.params, self.before):
            p.requires_grad_(flag)
