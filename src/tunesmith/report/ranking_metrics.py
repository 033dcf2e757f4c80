"""Ranking and matching metrics: a recommender's top-k lists, an embedding's retrieval and verification.

`ranking_metrics`: recall, nDCG, MAP, hit rate and catalogue coverage at k of a recommender.

Each user's relevant items are their held-out interactions (explicit ratings: those at or above a
threshold, when one is set); their ranked list is the model's top k among the items they had not
interacted with in training. A relevant item the model has no row for (an item new in the held-out
period) still counts in the user's relevant set: it is a miss the model could not avoid, and hiding
it would flatter every model equally. Users with no relevant item are left out; the metrics are the
mean over the rest. `retrieval_metrics` scores queries with one relevant document each (recall@k,
MRR@10, nDCG@10) and `verification_metrics` pairs judged alike or not by a similarity (ROC AUC, TAR at a
false-accept rate, EER).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def ranking_metrics(users: Sequence[Any], relevant: Sequence[Any], is_relevant: Sequence[bool],
                    ranked: dict[Any, Sequence[Any]], k: int, catalogue: int) -> dict[str, float]:
    """`recall_at_k`, `ndcg_at_k`, `map_at_k`, `hit_rate_at_k`, `coverage_at_k` and `ranked_users`.

    Args:
        users, relevant, is_relevant: per held-out row, its user, its item and whether it counts as relevant.
        ranked: each user's ranked items (at least k where the catalogue allows).
        catalogue: the number of items a list can hold, for coverage.
    """
    wanted: dict[Any, set[Any]] = {}
    for user, item, counts in zip(users, relevant, is_relevant):
        if counts:
            wanted.setdefault(user, set()).add(item)
    recall, ndcg, average_precision, hits, shown = [], [], [], [], set()
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for user, items in wanted.items():
        top = list(ranked[user])[:k]
        shown.update(top)
        hit = np.array([item in items for item in top], dtype=float)
        recall.append(hit.sum() / len(items))
        hits.append(float(hit.any()))
        ideal = discounts[:min(len(items), k)].sum()
        ndcg.append(float((hit * discounts[:len(hit)]).sum() / ideal))
        precision_at = np.cumsum(hit) / np.arange(1, len(hit) + 1)
        average_precision.append(float((precision_at * hit).sum() / min(len(items), k)))
    if not wanted:
        return {"ranked_users": 0}
    return {"recall_at_k": float(np.mean(recall)), "ndcg_at_k": float(np.mean(ndcg)),
            "map_at_k": float(np.mean(average_precision)), "hit_rate_at_k": float(np.mean(hits)),
            "coverage_at_k": len(shown) / max(catalogue, 1), "ranked_users": len(wanted)}


RETRIEVAL_KS = (1, 5, 10)


def retrieval_metrics(scores: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """Retrieval with one relevant document per query: `recall_at_{1,5,10}`, `mrr_at_10`, `ndcg_at_10`
    and `mean_rank`, the means over queries.

    Args:
        scores: (Q, N) each query's similarity to every document of the corpus.
        correct: (Q,) the index of each query's relevant document. Ties rank the relevant one last,
            so a model that scores everything alike earns nothing.
    """
    if len(scores) == 0:
        return {}
    own = scores[np.arange(len(scores)), correct][:, None]
    rank = (scores >= own).sum(axis=1)  # 1 = first; equal scores count against the relevant document
    top10 = rank <= 10
    metrics = {f"recall_at_{k}": float((rank <= k).mean()) for k in RETRIEVAL_KS}
    metrics["mrr_at_10"] = float(np.where(top10, 1.0 / rank, 0.0).mean())
    metrics["ndcg_at_10"] = float(np.where(top10, 1.0 / np.log2(rank + 1), 0.0).mean())
    metrics["mean_rank"] = float(rank.mean())
    return metrics


FAR_POINTS = (0.01, 0.001)


def verification_metrics(scores: np.ndarray, same: np.ndarray) -> dict[str, float]:
    """Pair verification from similarity scores: `roc_auc`; `best_threshold_accuracy` and its
    `threshold` (the cut that scores these pairs best, so an upper bound on the same pairs: apply the
    validation threshold to a test set); `tar_at_far_0.01` / `tar_at_far_0.001` (the share of matching
    pairs accepted while at most that share of non-matching ones is); and `eer`, the rate at which
    false accepts equal false rejects. {} when the pairs are not of both kinds.

    Args:
        scores: (N,) each pair's similarity, higher meaning more alike.
        same: (N,) 1 for a matching pair, 0 for a non-matching one.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    same = np.asarray(same).astype(int)
    if len(np.unique(same)) < 2:
        return {}
    fpr, tpr, thresholds = roc_curve(same, scores)
    positives, negatives = same.sum(), len(same) - same.sum()
    correct = tpr * positives + (1 - fpr) * negatives  # accept scores >= threshold
    best = int(np.argmax(correct))
    eer_at = int(np.argmin(np.abs(fpr - (1 - tpr))))
    metrics = {"roc_auc": float(roc_auc_score(same, scores)), "best_threshold_accuracy": float(correct[best] / len(same)),
               "threshold": float(min(thresholds[best], 1.0))}
    for far in FAR_POINTS:
        metrics[f"tar_at_far_{far:g}"] = float(tpr[fpr <= far].max(initial=0.0))
    metrics["eer"] = float((fpr[eer_at] + 1 - tpr[eer_at]) / 2)
    return metrics
