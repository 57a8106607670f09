"""Which features separate devices, and which repeat each other: the exploration behind the features."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_selection import f_classif

from iot_assets.core.features import FEATURES


def exploration(train: pd.DataFrame) -> tuple[str, dict]:
    """Which features separate devices (ANOVA F across devices) and which repeat each other."""
    x = train[FEATURES].fillna(0.0)
    varying = [f for f in FEATURES if x[f].std() > 0]
    f_stat, _ = f_classif(x[varying], train["device_name"])
    separation = pd.Series(np.nan_to_num(f_stat, posinf=1e6), index=varying).sort_values(ascending=False)
    corr = x[varying].corr(method="spearman").abs()
    upper = corr.where(np.triu(np.ones(corr.shape, dtype=bool), k=1))
    redundant = upper.stack()
    redundant = redundant[redundant > 0.95].sort_values(ascending=False)
    constant = sorted(set(FEATURES) - set(varying))
    lines = [
        "# Feature exploration (training windows)", "",
        f"{len(train):,} windows of {train['device_name'].nunique()} devices, {len(FEATURES)} features.", "",
        "## Features that separate devices most (ANOVA F across devices)", "",
        "| feature | F |", "|---|---:|",
        *[f"| {name} | {value:,.1f} |" for name, value in separation.head(25).items()], "",
        "## Features that separate devices least", "",
        ", ".join(separation.tail(15).index), "",
        f"## Redundant pairs (|Spearman| > 0.95): {len(redundant)}", "",
        *[f"- {a} ~ {b}: {v:.3f}" for (a, b), v in redundant.head(30).items()], "",
        f"## Constant in training ({len(constant)})", "", ", ".join(constant) or "none", "",
    ]
    summary = {"top_separating": separation.head(25).round(2).to_dict(), "redundant_pairs": int(len(redundant)),
               "constant_features": constant}
    return "\n".join(lines), summary
