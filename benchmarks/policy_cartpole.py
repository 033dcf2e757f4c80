"""Policy task (issue 22): CartPole, pre-trained on the standard pole, fine-tuned to a heavy pole.

Two measurements, run by hand from the repository root (`python benchmarks/policy_cartpole.py`):

1. What fine-tuning bought, the RL way: `tunesmith compare examples/policy-heavy-pole.yaml` after
   `tunesmith train examples/policy-source.yaml`: the source as it is, fine-tune and scratch over 3
   seeds at the same 40,000-step budget, learning curves, area, rounds to a return of 475, and the
   return on the standard pole afterwards (forgetting). Arms: `--kl 0.1 0.0` adds fine-tunes with
   other KL weights (0.0: no penalty).
2. The cost of tunesmith's wrapping: environment steps per second of tunesmith's round (SB3's own
   `learn()` inside, tunesmith's optimizer with per-group rates) against plain SB3 `PPO.learn()` on
   the same algorithm, network, environment, hyperparameters and steps, in one process, alternating,
   best of three; the fine-tune's KL penalty is timed separately, being extra work by design.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

STEPS = 20_000
HYPER = {"n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20}


def tunesmith(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tunesmith.cli", *args], cwd=REPO, check=True)


def comparison(kls: list[float]) -> dict:
    if not (REPO / "runs" / "cartpole-source" / "best").exists():
        tunesmith("train", "examples/policy-source.yaml", "--overwrite")
    tunesmith("compare", "examples/policy-heavy-pole.yaml", "--overwrite")
    found = {"default": json.loads((REPO / "runs/cartpole-heavy-pole/compare/compare.json").read_text())}
    for kl in kls:
        out = f"runs/cartpole-heavy-pole-kl{kl}"
        tunesmith("compare", "examples/policy-heavy-pole.yaml", "--overwrite", "--set", f"policy.kl_coef={kl}",
                  "--set", f"output_dir={out}", "--set", 'compare.arms=["finetune"]')
        found[f"kl {kl}"] = json.loads((REPO / out / "compare" / "compare.json").read_text())
    return found


def steps_per_second() -> dict[str, float]:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from tunesmith.config import load_config
    from tunesmith.strategies.learning_rates import optimizer_param_groups
    from tunesmith.tasks import get_task

    torch.set_num_threads(1)
    config = load_config({"task": "policy", "output_dir": "runs/bench", "model": {"source": "new"},
                          "training": {"learning_rate": 1e-3, "seed": 0},
                          "policy": {"steps_per_round": STEPS, "hyperparameters": HYPER}})
    times: dict[str, list[float]] = {"sb3": [], "tunesmith": []}
    for _ in range(3):
        plain = PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8, seed=0), learning_rate=1e-3, seed=0,
                    device="cpu", **HYPER)
        started = time.perf_counter()
        plain.learn(STEPS)
        times["sb3"].append(time.perf_counter() - started)
        task = get_task(config)
        task.preflight()
        model = task.build_model()
        model.use_param_groups(optimizer_param_groups(task.layer_groups(model), 1e-3, 1.0, 0.0), 1e-3)
        started = time.perf_counter()
        model.fit_round([], 0)
        times["tunesmith"].append(time.perf_counter() - started)
    best = {k: STEPS / min(v) for k, v in times.items()}
    return {**best, "ratio": best["tunesmith"] / best["sb3"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kl", type=float, nargs="*", default=[0.0])
    parser.add_argument("--speed-only", action="store_true")
    args = parser.parse_args()
    speed = steps_per_second()
    print(json.dumps({"steps_per_second": speed}, indent=1))
    if not args.speed_only:
        for name, result in comparison(args.kl).items():
            print(name, json.dumps({"arms": [{k: r.get(k) for k in ("arm", "metrics")} for r in result["arms"]],
                                    "curve_summary": result.get("curve_summary")}, indent=1))


if __name__ == "__main__":
    main()
