"""Gymnasium environments as the policy task names them: a registered id, its keyword arguments, and
the changes that make a variant of it (physics attributes, observation noise, reward scale).

`gymnasium.make(id, **kwargs)` covers what an environment's constructor takes. Physics an environment
keeps as attributes (CartPole's `gravity`, `masspole`, `length`, `force_mag`) is set on the unwrapped
environment after it is made; attributes the constructor derives from them are derived again
(`DERIVED`), since setting `masspole` alone would leave CartPole's `total_mass` stale and the variant
silently half-changed. Observation noise is Gaussian with the given standard deviation, drawn from a
generator seeded with the episode's reset seed, so an evaluation episode is the same every time.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import Field

from tunesmith.config import Section
from tunesmith.errors import ConfigError, ModelSourceError

INSTALL = "pip install 'tunesmith[rl]'"

def _cartpole(env: Any) -> None:
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length


# Attributes an environment's constructor computes from others: recomputed after physics changes.
DERIVED: dict[str, Callable[[Any], None]] = {"CartPoleEnv": _cartpole}


class EnvironmentSpec(Section):
    """One environment: what `gymnasium.make` builds, and how the variant differs from it."""

    id: str = "CartPole-v1"
    """A registered Gymnasium id (`CartPole-v1`, `Acrobot-v1`, `Pendulum-v1`, ...)."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the environment's constructor (`Pendulum-v1`: `{g: 12.0}`)."""
    physics: dict[str, float] = Field(default_factory=dict)
    """Numeric attributes set on the environment after it is made (`CartPole-v1`: `{masspole: 0.3,
    gravity: 12.0}`); attributes derived from them are derived again."""
    observation_noise: float = Field(0.0, ge=0)
    """Standard deviation of Gaussian noise added to every observation (a noisy sensor)."""
    reward_scale: float = Field(1.0, gt=0)
    """Every reward is multiplied by this."""
    max_episode_steps: int | None = Field(None, ge=1)
    """Episode length limit; `null` keeps the environment's registered one."""

    def describe(self) -> str:
        changes = [f"{k}={v}" for k, v in {**self.kwargs, **self.physics}.items()]
        if self.observation_noise:
            changes.append(f"observation noise {self.observation_noise}")
        if self.reward_scale != 1:
            changes.append(f"reward x{self.reward_scale}")
        return self.id + (f" ({', '.join(changes)})" if changes else "")


def require(module: str) -> Any:
    """gymnasium or stable_baselines3, the `rl` extra; one line naming the install when missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelSourceError(f"task: policy needs gymnasium and stable-baselines3: {INSTALL}") from None


def make_env(spec: EnvironmentSpec, key: str) -> Any:
    """The environment `spec` describes; `key` names its config key in errors.

    Raises:
        ConfigError: the id is not registered, the constructor refuses a keyword, or a physics
            attribute is not a number the environment has.
    """
    gym = require("gymnasium")
    if spec.id not in gym.registry:
        close = difflib.get_close_matches(spec.id, list(gym.registry), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `python -c \"import gymnasium; " \
               "print(list(gymnasium.registry))\"` lists them"
        raise ConfigError([f"{key}.id: {spec.id!r} is no registered Gymnasium environment{hint}"])
    extra = {} if spec.max_episode_steps is None else {"max_episode_steps": spec.max_episode_steps}
    try:
        env = gym.make(spec.id, **spec.kwargs, **extra)
    except TypeError as exc:
        raise ConfigError([f"{key}.kwargs: {spec.id} refuses them ({exc}); remove the keyword or set it "
                           "as physics instead"]) from exc
    _set_physics(env.unwrapped, spec, key)
    if spec.observation_noise:
        env = ObservationNoise(env, spec.observation_noise)
    if spec.reward_scale != 1:
        env = gym.wrappers.TransformReward(env, lambda r: r * spec.reward_scale)
    return env


def _set_physics(env: Any, spec: EnvironmentSpec, key: str) -> None:
    numeric = sorted(k for k, v in vars(env).items() if isinstance(v, numbers.Real) and not isinstance(v, bool)
                     and not k.startswith("_"))
    for name, value in spec.physics.items():
        if name not in numeric:
            raise ConfigError([f"{key}.physics.{name}: {spec.id} has no numeric attribute {name!r}; it has "
                               f"{', '.join(numeric) or 'none'}"])
        setattr(env, name, type(getattr(env, name))(value))
    if spec.physics and type(env).__name__ in DERIVED:
        DERIVED[type(env).__name__](env)


def _observation_noise_wrapper() -> type:
    wrapper: Any = require("gymnasium").ObservationWrapper

    class Noisy(wrapper):
        """Adds N(0, std) to every observation, from a generator reseeded at each seeded reset."""

        def __init__(self, env: Any, std: float):
            super().__init__(env)
            self.std, self.rng = std, np.random.default_rng(0)

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> Any:
            if seed is not None:
                self.rng = np.random.default_rng(seed)
            return super().reset(seed=seed, options=options)

        def observation(self, observation: np.ndarray) -> np.ndarray:
            noise = self.rng.normal(0.0, self.std, np.shape(observation))
            return (observation + noise).astype(self.observation_space.dtype)

    return Noisy


def ObservationNoise(env: Any, std: float) -> Any:  # noqa: N802 - reads as the wrapper class it builds
    """`env` with Gaussian observation noise (the class is built on first use: gymnasium is optional)."""
    return _observation_noise_wrapper()(env, std)
