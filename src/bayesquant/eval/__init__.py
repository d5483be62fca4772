"""Evaluation: metrics and `evaluate` for language models and classifiers."""

from bayesquant.eval import metrics
from bayesquant.eval.evaluate import classifier_metrics, evaluate, evaluate_classifier, evaluate_lm, predict_probs

__all__ = ["classifier_metrics", "evaluate", "evaluate_classifier", "evaluate_lm", "metrics", "predict_probs"]
