"""The inventory the pipeline writes for every day, training days included: per device, days said `unknown`.

    python benchmarks/inventory_all_days.py --work /tmp/unseen/work --sources real

The pipeline scores every day with the served classifier, the days it was trained on too
(`device_inventory`); a trained device must be named on them. Per source (`unseen_data`, the
archives without episodes) and device: training and evaluation days said `unknown`, and the
range of their novelty. `--profile-days` sets the length of a novelty profile's period
(`novelty.PROFILE_DAYS`); `--last-period-only` profiles the last period alone, as before per-period
profiles. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import unseen_data  # noqa: E402

from iot_assets.core import classifier, novelty, splits  # noqa: E402
from iot_assets.core.device_inventory import day_verdicts  # noqa: E402
from iot_assets.core.features import FEATURES  # noqa: E402


def per_device(windows: pd.DataFrame, split: splits.TimeSplit, last_period_only: bool, profile_days: int,
               seed: int) -> pd.DataFrame:
    model, _, _ = classifier.train_and_evaluate(windows, split, seed)
    labelled = windows[windows["device_name"].notna()]
    train = labelled[split.is_train(labelled)]
    if last_period_only:
        last = novelty.profile_periods(sorted(splits.window_days(train).unique()), profile_days)[-1]
        model.novelty = novelty.fit_novelty(train[splits.window_days(train).isin(last)], "device_name", FEATURES,
                                            profile_days=None)
    else:
        model.novelty = novelty.fit_novelty(train, "device_name", FEATURES, profile_days=profile_days)
    verdicts = day_verdicts(model, labelled)
    verdicts["device"] = verdicts["device_key"].map(labelled.groupby("device_key")["device_name"].first())
    verdicts["training"] = verdicts["day"] <= split.train_range[1]
    rows = []
    for device, part in verdicts.groupby("device"):
        unknown = part[part["status"] == "unknown"]
        rows.append({"device": device, "train_days": int(part["training"].sum()),
                     "train_unknown": int(unknown["training"].sum()),
                     "eval_days": int((~part["training"]).sum()), "eval_unknown": int((~unknown["training"]).sum()),
                     "unknown_first": unknown["day"].min() if len(unknown) else "-",
                     "unknown_last": unknown["day"].max() if len(unknown) else "-",
                     "novelty_min": unknown["novelty"].min(), "novelty_max": unknown["novelty"].max()})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/unseen/work"), help="cache of the built windows")
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--sources", default="real")
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--profile-days", type=int, default=novelty.PROFILE_DAYS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for source in args.sources.split(","):
        if source == "real" and not unseen_data.REAL_ARCHIVES.exists():
            print(f"\n=== real: {unseen_data.REAL_ARCHIVES} absent, skipped")
            continue
        windows, _, _ = unseen_data.load(source, args.work, args.days, args.scale, with_episodes=False)
        split = splits.TimeSplit.of(windows, args.train_fraction)
        print(f"\n=== {source}: train {split.train_range[0]}..{split.train_range[1]}, "
              f"evaluate {split.eval_range[0]}..{split.eval_range[1]}; profile periods of {args.profile_days} days")
        for last_only, name in ((True, "last period only (before)"), (False, "one profile per period (after)")):
            started = time.monotonic()
            table = per_device(windows, split, last_only, args.profile_days, args.seed)
            print(f"\n{name} [{time.monotonic() - started:.0f} s]")
            print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))


if __name__ == "__main__":
    main()
