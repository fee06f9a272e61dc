"""Validation metrics in numpy; one that cannot be computed is a string giving the reason."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["binary_metrics", "multiclass_metrics", "pr_auc", "regression_metrics", "roc_auc"]

Metrics = dict[str, float | str]


def regression_metrics(pred: np.ndarray, y: np.ndarray, names: Sequence[str]) -> Metrics:
    err = pred.astype(np.float64) - y.astype(np.float64)
    values = {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}
    return {n: values[n] for n in names}


def _ranks(score: np.ndarray) -> np.ndarray:
    """1-based ranks, ties averaged."""
    order = np.argsort(score, kind="mergesort")
    sorted_s = score[order]
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(score)]])
    ranks = np.empty(len(score))
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e - 1) / 2 + 1
    return ranks


def _one_class(y: np.ndarray, what: str) -> str | None:
    pos = int(y.sum())
    if pos == 0 or pos == len(y):
        kind = "positives" if pos == 0 else "negatives"
        return f"one class only in the validation split (0 {kind} of {len(y)}{what})"
    return None


def roc_auc(y: np.ndarray, score: np.ndarray, what: str = "") -> float | str:
    """ROC AUC (Mann-Whitney U); a reason string with a single class."""
    reason = _one_class(y, what)
    if reason:
        return reason
    pos = int(y.sum())
    neg = len(y) - pos
    ranks = _ranks(score.astype(np.float64))
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def pr_auc(y: np.ndarray, score: np.ndarray, what: str = "") -> float | str:
    """Average precision (area under the precision-recall curve, step-wise)."""
    pos = int(y.sum())
    if pos == 0:
        return f"no positives in the validation split (0 of {len(y)}{what})"
    order = np.argsort(-score, kind="mergesort")
    ys, ss = y[order], score[order]
    tp = np.cumsum(ys)
    # Evaluate at the last index of each run of tied scores.
    last = np.concatenate([np.flatnonzero(np.diff(ss)), [len(ss) - 1]])
    precision = tp[last] / (last + 1)
    recall = tp[last] / pos
    prev = np.concatenate([[0.0], recall[:-1]])
    return float(np.sum((recall - prev) * precision))


def binary_metrics(
    prob: np.ndarray, y: np.ndarray, names: Sequence[str], threshold: float
) -> Metrics:
    yb = y.astype(np.float64)
    hit = prob >= threshold
    tp = int((hit & (yb == 1)).sum())
    fp = int((hit & (yb == 0)).sum())
    fn = int((~hit & (yb == 1)).sum())
    pos = int(yb.sum())
    values: Metrics = {
        "accuracy": float(np.mean(hit == (yb == 1))),
        "roc_auc": roc_auc(yb, prob),
        "pr_auc": pr_auc(yb, prob),
        "recall": tp / pos if pos else f"no positives in the validation split (0 of {len(y)})",
        "precision": tp / (tp + fp)
        if tp + fp
        else f"no prediction reaches the threshold {threshold} ({len(y)} samples)",
        "f1": 2 * tp / (2 * tp + fp + fn)
        if tp + fp + fn
        else f"no positives and no positive predictions ({len(y)} samples)",
    }
    return {n: values[n] for n in names}


def multiclass_metrics(
    prob: np.ndarray, y: np.ndarray, names: Sequence[str], classes: Sequence[str]
) -> Metrics:
    """Accuracy and macro averages over the classes present in the validation split."""
    pred = prob.argmax(axis=1)
    present = [k for k in range(len(classes)) if (y == k).any()]
    values: Metrics = {"accuracy": float(np.mean(pred == y))}
    precisions, recalls, f1s, aucs = [], [], [], []
    for k in present:
        tp = int(((pred == k) & (y == k)).sum())
        fp = int(((pred == k) & (y != k)).sum())
        fn = int(((pred != k) & (y == k)).sum())
        precisions.append(tp / (tp + fp) if tp + fp else 0.0)
        recalls.append(tp / (tp + fn))
        f1s.append(2 * tp / (2 * tp + fp + fn))
        auc = roc_auc((y == k).astype(np.float64), prob[:, k])
        if isinstance(auc, float):
            aucs.append(auc)
    reason = f"one class only in the validation split ({len(y)} samples)"
    if len(present) < 2:
        values.update(precision=reason, recall=reason, f1=reason, roc_auc=reason)
    else:
        values.update(
            precision=float(np.mean(precisions)),
            recall=float(np.mean(recalls)),
            f1=float(np.mean(f1s)),
            roc_auc=float(np.mean(aucs)),
        )
    return {n: values[n] for n in names}
