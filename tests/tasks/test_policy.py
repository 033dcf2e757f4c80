"""The policy task: Stable-Baselines3 policies fine-tuned to a changed Gymnasium environment.

The slow test is the issue's claim: a PPO policy pre-trained on CartPole-v1, fine-tuned to a heavier
pole seen through noisy sensors, has a larger area under its learning curve than the same network
from scratch at the same step budget, over fixed seeds; and the KL penalty keeps it from collapsing.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from tunesmith.config import load_config  # noqa: E402
from tunesmith.errors import ConfigError, ModelSourceError  # noqa: E402
from tunesmith.models.environments import EnvironmentSpec, make_env  # noqa: E402
from tunesmith.run import finetune  # noqa: E402
from tunesmith.tasks import get_task  # noqa: E402

CARTPOLE_PPO = {"n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20}
VARIANT = {"id": "CartPole-v1", "physics": {"masspole": 0.3}, "observation_noise": 0.05}


def contract_case(request, make) -> dict:
    """The task contract's case (tests/tasks/test_contract.py): a small new PPO policy on CartPole."""
    return {"model": {"source": "new"}, "data": {},
            "policy": {"steps_per_round": 64, "eval_episodes": 3, "n_envs": 4, "net_arch": [8, 8],
                       "hyperparameters": {"n_steps": 16, "batch_size": 16, "n_epochs": 1}}}


def config(tmp_path: Path, name: str, **policy) -> dict:
    return {"task": "policy", "output_dir": str(tmp_path / name), "overwrite_output_dir": True,
            "model": {"source": policy.pop("source", "new")},
            "training": {"learning_rate": 1e-3, "num_train_epochs": policy.pop("rounds", 2), "seed": 0,
                         "early_stopping_patience": None},
            "policy": {"steps_per_round": 2048, "eval_episodes": 3, "hyperparameters": CARTPOLE_PPO, **policy}}


def test_physics_are_set_and_derived_attributes_follow():
    env = make_env(EnvironmentSpec(id="CartPole-v1", physics={"masspole": 0.3, "length": 1.0}), "policy.environment")
    assert env.unwrapped.total_mass == pytest.approx(1.3)
    assert env.unwrapped.polemass_length == pytest.approx(0.3)


def test_bad_environment_keys_name_the_key():
    with pytest.raises(ConfigError, match="policy.environment.id: 'CartPol-v1'.*CartPole-v1"):
        make_env(EnvironmentSpec(id="CartPol-v1"), "policy.environment")
    with pytest.raises(ConfigError, match=r"policy.environment.physics.mass:.*masspole"):
        make_env(EnvironmentSpec(id="CartPole-v1", physics={"mass": 1.0}), "policy.environment")
    with pytest.raises(ConfigError, match="policy.environment.kwargs"):
        make_env(EnvironmentSpec(id="CartPole-v1", kwargs={"gravity": 3}), "policy.environment")


def test_noise_is_the_same_for_the_same_seed():
    env = make_env(EnvironmentSpec(id="CartPole-v1", observation_noise=0.1), "e")
    first, again = env.reset(seed=3)[0], env.reset(seed=3)[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, make_env(EnvironmentSpec(id="CartPole-v1"), "e").reset(seed=3)[0])


def test_a_source_is_read_without_unpickling_and_refused_when_it_needs_pickles(tmp_path):
    run = finetune(config(tmp_path, "src", rounds=1), quiet=True)
    zip_path = run.run_dir / "best" / "policy.zip"
    task = get_task(load_config(config(tmp_path, "ft", source=str(run.run_dir), environment=VARIANT)))
    task.preflight()
    model = task.build_model()
    assert model.new_tensors == []  # same spaces: every tensor comes from the source
    assert task.source_env is not None and task.source_env.physics == {}  # recorded by the source run: forgetting
    same = get_task(load_config(config(tmp_path, "again", source=str(run.run_dir))))
    assert same.source_env is None  # the source's own environment: nothing to forget
    with zipfile.ZipFile(zip_path) as z:
        data = json.loads(z.read("data"))
        members = {n: z.read(n) for n in z.namelist()}
    data["policy_kwargs"] = {":type:": "<class 'dict'>", ":serialized:": "gAR9lC4="}
    members["data"] = json.dumps(data).encode()
    pickled = tmp_path / "pickled.zip"
    with zipfile.ZipFile(pickled, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(ModelSourceError, match="policy.trust_pickles"):
        get_task(load_config(config(tmp_path, "p", source=str(pickled)))).preflight()
    with pytest.raises(ModelSourceError, match="policy.algorithm: ppo"):
        get_task(load_config(config(tmp_path, "d", source=str(zip_path), algorithm="dqn"))).preflight()


def test_a_changed_action_space_gets_a_new_head_and_groups_freeze(tmp_path):
    """A CartPole policy onto Acrobot (6 observations, 3 actions): new input layer and action head."""
    run = finetune(config(tmp_path, "src", rounds=1), quiet=True)
    cfg = config(tmp_path, "acro", source=str(run.run_dir), environment={"id": "Acrobot-v1"}, steps_per_round=512)
    cfg["strategy"] = {"freeze": 1}
    task = get_task(load_config(cfg))
    task.preflight()
    model = task.build_model()
    assert "action_net.weight" in model.new_tensors and "mlp_extractor.policy_net.0.weight" in model.new_tensors
    assert [g.name for g in task.layer_groups(model)] == ["stem", "layer1", "heads"]
    result = finetune(cfg, quiet=True)
    evals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    stem = sum(p.numel() for _, p in task.layer_groups(model)[0].params)
    total = sum(p.numel() for g in task.layer_groups(model) for _, p in g.params)
    assert evals[0]["trainable_params"] == total - stem


def test_dqn_trains_and_saves_a_zip_sb3_loads(tmp_path):
    from stable_baselines3 import DQN

    cfg = config(tmp_path, "dqn", algorithm="dqn", steps_per_round=1000, rounds=1,
                 hyperparameters={"learning_starts": 200, "buffer_size": 5000})
    result = finetune(cfg, quiet=True)
    assert "mean_return" in result.final
    task = get_task(load_config(cfg))
    task.preflight()
    model = task.build_model()
    assert [g.name for g in task.layer_groups(model)] == ["stem", "layer1", "heads"]
    task.save(model, str(tmp_path / "saved"))
    loaded = DQN.load(tmp_path / "saved" / "policy.zip", device="cpu")
    obs = np.zeros((1, 4), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0],
                                  model.algo.predict(obs, deterministic=True)[0])


@pytest.mark.slow
def test_finetuning_beats_scratch_on_a_heavier_noisy_pole(tmp_path):
    """Area under the curve (mean return over the evaluations) over two seeds: fine-tune > scratch."""
    source = finetune(config(tmp_path, "src", rounds=6, steps_per_round=10_000,
                             environment={"id": "CartPole-v1"}), quiet=True)
    areas: dict[str, list[float]] = {"finetune": [], "scratch": []}
    for seed in (0, 1):
        for arm, pretrained in (("finetune", True), ("scratch", False)):
            cfg = config(tmp_path, f"{arm}{seed}", source=str(source.run_dir), environment=VARIANT, rounds=5,
                         steps_per_round=4000)
            cfg["training"]["seed"], cfg["model"]["pretrained"] = seed, pretrained
            run = finetune(cfg, quiet=True)
            records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
            areas[arm].append(np.mean([r["mean_return"] for r in records if r["phase"] in ("baseline", "eval")]))
    assert np.mean(areas["finetune"]) > np.mean(areas["scratch"]), areas
