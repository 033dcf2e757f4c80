"""Scores of generated text against references: BLEU (sacrebleu) and ROUGE (rouge-score).

BLEU is sacrebleu's corpus BLEU with its default 13a tokenization, the number WMT papers report;
ROUGE-1, ROUGE-2 and ROUGE-L are the mean F-measures of Google's rouge-score package with stemming,
as the summarization papers and Hugging Face's examples report them. Both are on a 0-100 scale.
"""

from __future__ import annotations

import logging


def generation_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """`bleu`, `rouge1`, `rouge2`, `rougeL` (0-100) of one prediction per reference."""
    import sacrebleu
    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs "Using default tokenizer." each time
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references):
        for name, score in scorer.score(reference, prediction).items():
            sums[name] += score.fmeasure
    n = max(len(references), 1)
    scores = {"bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score)}
    scores.update({name: 100 * total / n for name, total in sums.items()})
    return scores
