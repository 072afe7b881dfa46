"""The paired summary of a validation study over seeds (benchmarks/stage12_validation.py and
benchmarks/warmup_validation.py print it): no flags, so either script can import it."""

from __future__ import annotations

import numpy as np


def paired_summary(pairs, one_seed: str = "") -> str | None:
    """ "paired over N seed(s): mean ± std (each)" of validation Top-K avg, the second result of each pair
    minus the first, over the pairs where both exist (None when none does); `one_seed` stands for the std
    of a single pair."""
    diffs = []
    for a, b in pairs:
        if a and b:
            k = str(a["k"])
            diffs.append(b["topk"][k]["avg"] - a["topk"][k]["avg"])
    if not diffs:
        return None
    std = f" ± {np.std(diffs, ddof=1):.3f}" if len(diffs) > 1 else one_seed
    return f"paired over {len(diffs)} seed(s): {np.mean(diffs):+.3f}{std} ({', '.join(f'{d:+.3f}' for d in diffs)})"
