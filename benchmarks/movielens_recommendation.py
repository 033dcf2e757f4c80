"""MovieLens latest-small: tunesmith's `mf` recommender against Surprise, and fold-in of new users.

Run by hand (not a test), from the repository root, with Debian's r-cran-dslabs package extracted
(`dpkg-deb -x r-cran-dslabs_*.deb DIR`; its data/ folder holds MovieLens latest-small as `movielens`):

    .venv/bin/python benchmarks/movielens_recommendation.py --dslabs DIR/usr/lib/R/site-library/dslabs/data
    .venv/bin/python benchmarks/movielens_recommendation.py --dslabs movielens.rda --quick   # one setting of each grid

The full run takes 5-10 minutes on two cores (5 alone, 10 beside another test run); --quick about 2.

`--dslabs` is the package's data folder (the lazy-load Rdata.rdb/.rdx) or an .rda/.RData file holding
`movielens`; it is read with the `rdata` package and never copied. Split files and run directories go
under `--out` (default: a temporary folder outside the repository).

1. Rating prediction, two splits: by time (the latest 10 % of ratings are the test rows; the latest
   10 % of the rest validate) and a seeded random 80/20 (a seeded 10 % of the 80 % validates). Every
   arm trains on the same rows; validation only picks settings and (tunesmith) the early-stopping
   epoch. Arms: global mean; Surprise BaselineOnly (ALS defaults); Surprise SVD with its defaults and
   at the best validation RMSE of a grid (n_factors 100, n_epochs {20, 30}, lr_all {0.005, 0.01},
   reg_all {0.02, 0.05, 0.1}); tunesmith mf at the best validation RMSE of a few settings
   (learning rate, factors, regularization). Test RMSE / MAE, seconds of the chosen fit (the grid's
   total in brackets).
2. Fold-in: a seeded 20 % of users are new; the model never sees their ratings but their first 5 by
   time (fold-in rows). Half of the new users tune (their later ratings pick fold-in settings), the
   other half test (their later ratings are scored; nothing is chosen on them). The parent is tunesmith
   mf (the setting chosen in part 1's time split) on the old users' ratings, its latest 10 % by time
   validating. Arms: the parent as is (new users fall back to offset + item bias, popularity for
   ranking); fold-in (the parent fine-tuned on the fold-in rows, item side frozen, `update_ids: new`);
   full retrain (mf on the old rows + the fold-in rows); Surprise SVD (the time split's chosen
   setting) on the same rows. Test RMSE / MAE and recall / nDCG at 10 of the test new users, seconds.

Seconds: tunesmith's are its training loop clock (`train_seconds`, which holds the per-epoch
evaluations and checkpoint saves), that clock less those evaluations and saves in parentheses (the
training steps), and the whole `finetune` call (reading, baseline, final evaluation) in brackets;
Surprise's are `fit`. Prints Markdown tables and the CPU.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import itertools
import os
import platform
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

K = 10
MF_GRID = [  # (learning rate, factors, regularization): the task's defaults first
    (1e-2, 32, 0.01), (1e-2, 32, 0.05), (3e-3, 32, 0.1), (3e-3, 64, 0.05)]
SVD_GRID = {"n_factors": [100], "n_epochs": [20, 30], "lr_all": [0.005, 0.01], "reg_all": [0.02, 0.05, 0.1]}
FOLDIN_GRID = [(0.05, 30), (0.01, 30)]  # (learning rate, epochs) of the fold-in fine-tune, batch 32


# ---- data -----------------------------------------------------------------------------------

def _lazy_load_object(folder: Path, name: str):
    """`name` from an R lazy-load database (Rdata.rdx index + Rdata.rdb, zlib-compressed objects)."""
    import rdata

    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((folder / "Rdata.rdx").read_bytes())))
    offset, length = (int(x) for x in index["variables"][name])
    with open(folder / "Rdata.rdb", "rb") as f:
        f.seek(offset)
        blob = f.read(length)
    return rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))  # 4 bytes: length


def load_ratings(path: Path) -> pd.DataFrame:
    """(user_id, item_id, rating, timestamp) of dslabs' `movielens`, ids as text, sorted by time."""
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that an index "is assumed RDS"
        if path.is_dir():
            frame = _lazy_load_object(path, "movielens")
        else:
            frame = rdata.read_rda(str(path))["movielens"]
    ratings = pd.DataFrame({"user_id": frame["userId"].astype(int).astype(str),
                            "item_id": frame["movieId"].astype(int).astype(str),
                            "rating": frame["rating"].astype(float), "timestamp": frame["timestamp"].astype(int)})
    return ratings.sort_values("timestamp", kind="stable").reset_index(drop=True)


def by_time(rows: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(earlier, latest `fraction`) of rows sorted by time."""
    rows = rows.sort_values("timestamp", kind="stable")
    cut = len(rows) - round(len(rows) * fraction)
    return rows.iloc[:cut], rows.iloc[cut:]


def at_random(rows: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the rest, a seeded random `fraction`)."""
    held = rows.sample(frac=fraction, random_state=seed)
    return rows.drop(held.index), held


def write(rows: pd.DataFrame, folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    rows.to_csv(path, index=False)
    return str(path)


# ---- arms -----------------------------------------------------------------------------------

@functools.cache
def loop_timers() -> dict[str, list[float]]:
    """Timers around the training loop's evaluations and saves, installed once (behaviour unchanged)."""
    from _arms import time_loop_extras

    return time_loop_extras()


def finetune_timed(config: dict) -> tuple[object, dict]:
    """(tunesmith's result, {"loop": its loop clock, "steps": that less the in-loop evaluations and
    saves, "wall": the whole call})."""
    from _arms import in_loop_seconds

    from tunesmith.run import finetune

    spent = loop_timers()
    for record in spent.values():
        record.clear()
    started = time.perf_counter()
    result = finetune(config, quiet=True)
    wall = time.perf_counter() - started
    return result, {"loop": result.train_seconds, "steps": result.train_seconds - in_loop_seconds(spent), "wall": wall}


def shown(seconds: dict) -> str:
    """tunesmith's seconds as the table shows them: loop (training steps only) [whole call]."""
    return f"{seconds['loop']:.2f} ({seconds['steps']:.2f}) [{seconds['wall']:.1f}]"


def train_mf(folder: Path, train: str, val: str, setting: tuple[float, int, float], seed: int) -> tuple[object, dict]:
    lr, factors, reg = setting
    return finetune_timed({
        "task": "recommendation", "output_dir": str(folder), "overwrite_output_dir": True, "model": {"source": "mf"},
        "data": {"train": train, "validation": val},
        "training": {"seed": seed, "dataloader_num_workers": 0, "learning_rate": lr},
        "recommendation": {"factors": factors, "regularization": reg, "top_k": K}})


def fold_in(folder: Path, parent: Path, train: str, val: str, setting: tuple[float, int], reg: float,
            seed: int) -> tuple[object, dict]:
    """The parent fine-tuned on new users' rows: item side frozen, only the new ids' rows move."""
    lr, epochs = setting
    return finetune_timed({
        "task": "recommendation", "output_dir": str(folder), "overwrite_output_dir": True,
        "model": {"source": str(parent)}, "data": {"train": train, "validation": val},
        "training": {"seed": seed, "dataloader_num_workers": 0, "learning_rate": lr, "num_train_epochs": epochs,
                     "per_device_train_batch_size": 32},
        "recommendation": {"regularization": reg, "update_ids": "new", "top_k": K},
        "strategy": {"freeze_groups": ["item_embeddings", "item_biases"]}})


def score_run(run_dir: Path, test: str) -> dict:
    from tunesmith.run import evaluate

    return evaluate(str(run_dir), test)


def surprise_fit(algo, rows: pd.DataFrame) -> float:
    """Fits `algo` on rows; its seconds."""
    from surprise import Dataset, Reader

    data = Dataset.load_from_df(rows[["user_id", "item_id", "rating"]], Reader(rating_scale=(0.5, 5.0)))
    trainset = data.build_full_trainset()
    started = time.perf_counter()
    algo.fit(trainset)
    return time.perf_counter() - started


def errors(predicted: np.ndarray, rows: pd.DataFrame) -> dict:
    error = np.clip(predicted, 0.5, 5.0) - rows["rating"].to_numpy()
    return {"rmse": float(np.sqrt((error**2).mean())), "mae": float(np.abs(error).mean())}


def surprise_scores(algo, rows: pd.DataFrame) -> dict:
    """Test RMSE / MAE (Surprise clips to the rating scale) and, for SVD and BaselineOnly, ranking at K."""
    predicted = np.array([algo.predict(u, i).est for u, i in zip(rows["user_id"], rows["item_id"])])
    return errors(predicted, rows) | surprise_ranking(algo, rows)


def surprise_ranking(algo, rows: pd.DataFrame) -> dict:
    """Recall / nDCG at K with tunesmith's ranking metrics: each test user's top K among the items
    they had not rated in training; a user Surprise does not know gets the items by popularity."""
    from tunesmith.report.ranking_metrics import ranking_metrics

    ts = algo.trainset
    popular = np.argsort(-np.array([len(ts.ir[i]) for i in range(ts.n_items)]), kind="stable")
    lists = {}
    for user in rows["user_id"].unique():
        try:
            inner = ts.to_inner_uid(user)
        except ValueError:
            lists[user] = [ts.to_raw_iid(int(i)) for i in popular[:K]]
            continue
        scores = algo.bi + (algo.qi @ algo.pu[inner] if hasattr(algo, "pu") else 0.0)
        scores[[i for i, _ in ts.ur[inner]]] = -np.inf
        lists[user] = [ts.to_raw_iid(int(i)) for i in np.argsort(-scores, kind="stable")[:K]]
    got = ranking_metrics(list(rows["user_id"]), list(rows["item_id"]), [True] * len(rows), lists, K, ts.n_items)
    return {"recall_at_k": got["recall_at_k"], "ndcg_at_k": got["ndcg_at_k"]}


def svd_grid(fit: pd.DataFrame, val: pd.DataFrame, seed: int, quick: bool) -> tuple[dict, float, list]:
    """(best SVD parameters by validation RMSE, the grid's seconds, [(params, val rmse)])."""
    from surprise import SVD

    keys, tried, spent = list(SVD_GRID), [], 0.0
    grid = list(itertools.product(*SVD_GRID.values()))[:1 if quick else None]
    for values in grid:
        params = dict(zip(keys, values))
        algo = SVD(random_state=seed, **params)
        spent += surprise_fit(algo, fit)
        predicted = np.array([algo.predict(u, i).est for u, i in zip(val["user_id"], val["item_id"])])
        tried.append((params, errors(predicted, val)["rmse"]))
    return min(tried, key=lambda t: t[1])[0], spent, tried


# ---- part 1: rating prediction ----------------------------------------------------------------

def rating_benchmark(name: str, fit: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame, folder: Path,
                     args: argparse.Namespace) -> tuple[list[dict], dict]:
    """The arms' rows for one split, and what was chosen on validation."""
    from surprise import SVD, BaselineOnly

    files = {part: write(rows, folder, part) for part, rows in (("fit", fit), ("val", val), ("test", test))}
    rows = [{"arm": "global mean", **errors(np.full(len(test), fit["rating"].mean()), test), "seconds": "0"}]
    base = BaselineOnly(verbose=False)
    seconds = surprise_fit(base, fit)
    rows.append({"arm": "Surprise BaselineOnly", **surprise_scores(base, test), "seconds": f"{seconds:.2f}"})
    default = SVD(random_state=args.seed)
    seconds = surprise_fit(default, fit)
    rows.append({"arm": "Surprise SVD, defaults", **surprise_scores(default, test), "seconds": f"{seconds:.2f}"})
    best, grid_seconds, _ = svd_grid(fit, val, args.seed, args.quick)
    tuned = SVD(random_state=args.seed, **best)
    seconds = surprise_fit(tuned, fit)
    label = ", ".join(f"{k} {v}" for k, v in best.items())
    rows.append({"arm": f"Surprise SVD, best of grid ({label})", **surprise_scores(tuned, test),
                 "seconds": f"{seconds:.2f} (grid {grid_seconds:.0f})"})
    rows.append(mf_row(files, folder, args))
    print(f"{name} split done", flush=True)
    return rows, {"svd": best, "mf": rows[-1]["setting"]}


def mf_row(files: dict, folder: Path, args: argparse.Namespace) -> dict:
    """tunesmith mf at the setting with the best validation RMSE, scored on the test file."""
    tried = []
    for i, setting in enumerate(MF_GRID[:1 if args.quick else None]):
        result, took = train_mf(folder / f"mf-{i}", files["fit"], files["val"], setting, args.seed)
        tried.append((result.final["rmse"], setting, result, took))
        print(f"  mf {setting}: validation rmse {result.final['rmse']:.4f} (bias baseline "
              f"{result.baseline['rmse']:.4f}), best step {result.best_step}, {took['wall']:.0f} s", flush=True)
    _, setting, result, took = min(tried, key=lambda t: t[0])
    total = sum(t[3]["wall"] for t in tried)
    got = score_run(result.run_dir, files["test"])
    return {"arm": f"tunesmith mf, best of {len(tried)} (lr {setting[0]}, factors {setting[1]}, reg {setting[2]})",
            **{k: got[k] for k in ("rmse", "mae", "recall_at_k", "ndcg_at_k")}, "setting": setting,
            "seconds": f"{shown(took)} (grid {total:.0f})"}


# ---- part 2: fold-in ------------------------------------------------------------------------

def new_user_split(ratings: pd.DataFrame, seed: int, share: float, first: int) -> dict[str, pd.DataFrame]:
    """old rows; the new users' first `first` ratings by time (fold-in); their later ratings, for
    the tuning half of the new users and the test half."""
    users = np.array(sorted(ratings["user_id"].unique()))
    rng = np.random.default_rng(seed)
    new = rng.choice(users, size=round(len(users) * share), replace=False)
    tune, test = set(new[: len(new) // 2]), set(new[len(new) // 2:])
    mine = ratings[ratings["user_id"].isin(set(new))].sort_values("timestamp", kind="stable")
    rank = mine.groupby("user_id").cumcount()
    later = mine[rank >= first]
    return {"old": ratings[~ratings["user_id"].isin(set(new))], "foldin": mine[rank < first],
            "tune": later[later["user_id"].isin(tune)], "test": later[later["user_id"].isin(test)]}


def foldin_benchmark(ratings: pd.DataFrame, chosen: dict, folder: Path, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """The fold-in arms' rows, scored on the test half of the new users, and the split's sizes."""
    from surprise import SVD

    parts = new_user_split(ratings, args.seed, args.new_users, args.foldin_rows)
    old_fit, old_val = by_time(parts["old"], 0.1)
    files = {"old_fit": write(old_fit, folder, "old_fit"), "old_val": write(old_val, folder, "old_val"),
             "foldin": write(parts["foldin"], folder, "foldin"), "tune": write(parts["tune"], folder, "tune"),
             "test": write(parts["test"], folder, "test"),
             "retrain": write(pd.concat([old_fit, parts["foldin"]]), folder, "retrain"),
             "retrain_val": write(pd.concat([old_val, parts["tune"]]), folder, "retrain_val")}
    setting = chosen["mf"]
    parent, parent_took = train_mf(folder / "parent", files["old_fit"], files["old_val"], setting, args.seed)
    rows = [tunesmith_row("parent as is (new users: offset + item bias)", parent.run_dir, files["test"],
                          f"0 (parent: {shown(parent_took)})")]
    tried = []
    for i, fs in enumerate(FOLDIN_GRID[:1 if args.quick else None]):
        result, took = fold_in(folder / f"foldin-{i}", parent.run_dir, files["foldin"], files["tune"], fs,
                               setting[2], args.seed)
        tried.append((result.final["rmse"], fs, result, took))
        print(f"  fold-in {fs}: tuning users' rmse {result.final['rmse']:.4f}, best step {result.best_step}, "
              f"{took['wall']:.1f} s", flush=True)
    _, fs, best, took = min(tried, key=lambda t: t[0])
    rows.append(tunesmith_row(f"fold-in (lr {fs[0]}, best of {len(tried)})", best.run_dir, files["test"],
                              shown(took), took))
    retrain, retrain_took = train_mf(folder / "retrain", files["retrain"], files["retrain_val"], setting, args.seed)
    rows.append(tunesmith_row("full retrain (mf, old + fold-in rows)", retrain.run_dir, files["test"],
                              shown(retrain_took), retrain_took))
    svd = SVD(random_state=args.seed, **chosen["svd"])
    seconds = surprise_fit(svd, pd.concat([old_fit, parts["foldin"]]))
    rows.append({"arm": "Surprise SVD (time split's best), old + fold-in rows", **surprise_scores(svd, parts["test"]),
                 "seconds": f"{seconds:.2f}"})
    sizes = {k: (len(v), v["user_id"].nunique()) for k, v in parts.items()}
    return rows, sizes


def tunesmith_row(arm: str, run_dir: Path, test: str, seconds: str, timing: dict | None = None) -> dict:
    got = score_run(run_dir, test)
    return {"arm": arm, **{k: got[k] for k in ("rmse", "mae", "recall_at_k", "ndcg_at_k")}, "seconds": seconds,
            "timing": timing}


# ---- report ---------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def table(rows: list[dict]) -> str:
    def num(row: dict, key: str) -> str:
        return f"{row[key]:.4f}" if row.get(key) is not None else "–"

    lines = ["| arm | test RMSE | test MAE | recall@10 | nDCG@10 | seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['arm']} | {num(r, 'rmse')} | {num(r, 'mae')} | {num(r, 'recall_at_k')} | {num(r, 'ndcg_at_k')} "
              f"| {r['seconds']} |" for r in rows]
    return "\n".join(lines)


def goals(rows: list[dict]) -> str:
    """The issue's goals: fold-in within 2 % of full retraining's RMSE at <= 1/20 of its time, and at
    or below Surprise SVD's RMSE."""
    fold, full, svd = rows[1], rows[2], rows[3]
    ratio = fold["rmse"] / full["rmse"]
    speed = {k: full["timing"][k] / max(fold["timing"][k], 1e-9) for k in ("loop", "steps", "wall")}
    verdict = "met" if speed["loop"] >= 20 else "NOT met"
    return (f"- fold-in RMSE / full retrain RMSE = {ratio:.4f} (goal <= 1.02: {'met' if ratio <= 1.02 else 'NOT met'})\n"
            f"- full retrain's seconds / fold-in's: loop {speed['loop']:.1f}x (goal >= 20x: {verdict}), training "
            f"steps only {speed['steps']:.1f}x, whole call {speed['wall']:.1f}x\n"
            f"- fold-in RMSE {fold['rmse']:.4f} vs Surprise SVD {svd['rmse']:.4f} "
            f"(goal <=: {'met' if fold['rmse'] <= svd['rmse'] else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dslabs", type=Path, required=True,
                        help="dslabs' data folder (Rdata.rdb/.rdx) or an .rda/.RData file holding `movielens`")
    parser.add_argument("--out", type=Path, default=None, help="split files and run dirs (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--new-users", type=float, default=0.2, help="share of users held out as new")
    parser.add_argument("--foldin-rows", type=int, default=5, help="each new user's first ratings that fold in")
    parser.add_argument("--quick", action="store_true", help="one setting of each grid (a smoke run)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="movielens_recommendation_"))
    started = time.perf_counter()
    ratings = load_ratings(args.dslabs)
    earlier, test = by_time(ratings, 0.1)
    fit, val = by_time(earlier, 0.1)
    time_rows, chosen = rating_benchmark("time", fit, val, test, out / "time", args)
    rest, rtest = at_random(ratings, 0.2, args.seed)
    rfit, rval = at_random(rest, 0.1, args.seed)
    random_rows, _ = rating_benchmark("random", rfit, rval, rtest, out / "random", args)
    fold_rows, sizes = foldin_benchmark(ratings, chosen, out / "foldin", args)
    known = test["user_id"].isin(set(fit["user_id"])).mean()
    print(f"\nMovieLens latest-small (dslabs 0.7.4): {len(ratings):,} ratings, {ratings['user_id'].nunique()} users, "
          f"{ratings['item_id'].nunique()} movies. CPU: {cpu_model()}, {os.cpu_count()} cores; load average at the "
          f"end {os.getloadavg()[0]:.2f}; {time.perf_counter() - started:.0f} s in all; run dirs under {out}\n")
    print(f"Time split: fit {len(fit):,} / validation {len(val):,} / test {len(test):,} ratings "
          f"({known:.0%} of the test ratings are by users seen in training)\n")
    print(table(time_rows) + "\n")
    print(f"Random 80/20 split (seed {args.seed}): fit {len(rfit):,} / validation {len(rval):,} / test {len(rtest):,}\n")
    print(table(random_rows) + "\n")
    print("Fold-in: " + ", ".join(f"{k} {n:,} ratings of {u} users" for k, (n, u) in sizes.items())
          + f"; mf setting from the time split: {chosen['mf']}\n")
    print(table(fold_rows) + "\n")
    print(goals(fold_rows))


if __name__ == "__main__":
    main()
