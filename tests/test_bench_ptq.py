"""The seed and budget summaries of bench/ptq.py, on hand-made rows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("bench_ptq", Path(__file__).parents[1] / "bench" / "ptq.py")
ptq = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ptq)


def row(label: str, seed: int, acc: float, bits: float) -> dict:
    return {"label": label, "seed": seed, "accuracy": acc, "storable_bits": bits, "nll": 0.1, "ece": 0.01,
            "quantize_seconds": 1.0}  # fmt: skip


ROWS = [
    row("fp32", 0, 0.99, 32.0),
    # two baseline configurations in the 3.0 bound: g-a has the better mean, g-b wins seed 1
    row("gptq:a", 0, 0.90, 3.04), row("gptq:a", 1, 0.80, 3.04),
    row("gptq:b", 0, 0.70, 3.09), row("gptq:b", 1, 0.85, 3.09),
    row("gptq:far", 0, 0.99, 3.20), row("gptq:far", 1, 0.99, 3.20),  # outside 3.0 ± 0.1: never the baseline
    row("bayesq:3", 0, 0.91, 3.00), row("bayesq:3", 1, 0.82, 3.00),
]  # fmt: skip


def test_budget_table_picks_the_best_mean_baseline_in_the_bound_and_counts_seeds():
    text = ptq.budget_table(ROWS, 3.0, "accuracy", "gptq")
    assert "gptq row = gptq:a" in text and "2 configurations" in text
    line = next(x for x in text.splitlines() if x.startswith("| bayesq:3 "))
    # against gptq:a: +1.00 and +2.00 points; against the per-seed best (0.90, 0.85): +1.00 and −3.00
    assert "+1.00 / +2.00" in line and "+1.50 ± 0.71" in line
    assert line.rstrip(" |").endswith("-1.00 | 1/2")
    assert "gptq:far" not in text
    wide = ptq.budget_table(ROWS, 3.0, "accuracy", "gptq", bound=0.25)  # now gptq:far is in, and the best
    assert "gptq row = gptq:far" in wide and "3 configurations" in wide and "± 0.25" in wide


def test_pooled_runs_keep_fp32_once_and_let_a_later_run_replace_a_configuration():
    first = {"rows": ROWS}
    again = {"rows": [row("fp32", 1, 0.5, 32.0), row("bayesq:3", 1, 0.95, 2.99), row("baq:3", 0, 0.7, 3.0)]}
    rows = ptq.pool_rows([first, again])
    assert [r["label"] for r in rows].count("fp32") == 1 and rows[0]["accuracy"] == 0.99  # the first fp32 row
    bq = {r["seed"]: r["accuracy"] for r in rows if r["label"] == "bayesq:3"}
    assert bq == {0: 0.91, 1: 0.95}  # seed 1 replaced, seed 0 kept
    assert len(rows) == len(ROWS) + 1 and any(r["label"] == "baq:3" for r in rows)


def test_budget_table_for_perplexity_counts_lower_as_better():
    rows = [{**r, "perplexity": 100 * (1 - r["accuracy"])} for r in ROWS]
    text = ptq.budget_table(rows, 3.0, "perplexity", "gptq")
    # perplexities: gptq:a 10 / 20 (mean 15) beats gptq:b 30 / 15 (22.5); bayesq 9 / 18 is 1 and 2 lower
    assert "gptq row = gptq:a" in text
    line = next(x for x in text.splitlines() if x.startswith("| bayesq:3 "))
    assert "+1.00 / +2.00" in line and line.rstrip(" |").endswith("-1.00 | 1/2")


def test_seed_table_gives_mean_and_std_per_configuration():
    text = ptq.seed_table(ROWS, "m", "accuracy")
    assert "| gptq:b | 2 | 3.090 | — | 77.50 ± 10.61 |" in text  # rows measured before sizes were recorded
    assert "| fp32 | 1 | 32.000 | — | 99.00 ± 0.00 |" in text
    sized = [{**r, "file_mb": 12.25} for r in ROWS]
    assert "| gptq:b | 2 | 3.090 | 12.2 | 77.50 ± 10.61 |" in ptq.seed_table(sized, "m", "accuracy")


def test_run_table_marks_rows_measured_without_the_second_spec():
    base = {"nominal_bits": 3.0, "storable_bits": 3.0, "quantize_seconds": 1.0, "peak_rss_gb": 1.0, "eval_seconds": 1.0}
    rows = [{**base, "label": "gptq:3", "perplexity": 50.0},  # pooled from a run without --also-data
            {**base, "label": "bayesq:3", "perplexity": 40.0, "perplexity_also": 44.5, "file_mb": 61.04}]  # fmt: skip
    lines = ptq.table(rows, "m", "perplexity", "other:test").splitlines()
    assert "perplexity on other:test" in lines[0] and "| file MB |" in lines[0]
    assert lines[2].startswith("| gptq:3 | 3.000 | 3.000 | — | 50.00 | — |")
    assert lines[3].startswith("| bayesq:3 | 3.000 | 3.000 | 61.0 | 40.00 | 44.50 |")


def test_unlabelled_rows_are_compared_by_kl_to_the_float_model_lower_being_better():
    def kl_row(label: str, seed: int, kl: float, bits: float) -> dict:
        return {"label": label, "seed": seed, "kl_to_reference": kl, "agreement": 0.9, "storable_bits": bits,
                "nominal_bits": bits, "quantize_seconds": 1.0, "peak_rss_gb": 1.0, "eval_seconds": 1.0}  # fmt: skip

    bq = "bayesq:4.15:0:storable"
    rows = [kl_row("gptq:4:0", 0, 0.250, 4.15), kl_row("gptq:4:0", 1, 0.200, 4.15),
            kl_row(bq, 0, 0.015, 4.15), kl_row(bq, 1, 0.020, 4.15)]  # fmt: skip
    assert ptq.metric_of(rows) == "kl_to_reference"
    line = next(x for x in ptq.budget_table(rows, 4.15, "kl_to_reference", "gptq").splitlines() if "bayesq" in x)
    assert "+235.00 / +180.00" in line and "2/2" in line  # 10⁻³ nats below GPTQ's, at both seeds
    assert "| 90.0% |" in ptq.table(rows[:1], "m", "kl_to_reference", None)
    assert "agreement" in ptq.seed_table(rows, "m", "kl_to_reference")
