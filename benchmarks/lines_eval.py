"""Behind the NAT: device models per subscriber line, measured on a lake of clean flows.

    python benchmarks/lines_eval.py --lake /work/lakes/sample/lake
    python benchmarks/lines_eval.py --lake /work/lakes/real/lake --leave-one-out

Reads `<lake>/clean_flows/day=*/part-0.parquet`, puts the devices on synthetic lines (or
the lines of `--lines-csv`), builds the line views at each sampling rate, learns the
endpoint signatures on the training days (the same time split as every model), and prints
device-day recall, precision, false presences per line-month and time to detect per rate,
for the sliding window and for a window of one day. `--leave-one-out` trains without each
model in turn: its traffic stays on the lines, so any detection it causes is a false one.
`--realism` prints how many training services are shared between models (the sample's
generated endpoints against the real archives'). Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iot_assets import lines  # noqa: E402
from iot_assets.classifier import time_split  # noqa: E402

COLUMNS = ["flow_start", "flow_end", "device_mac", "device_name", "remote_ip", "remote_port", "remote_scope",
           "protocol", "bytes_out", "bytes_in", "packets_out", "packets_in"]


def read_lake(lake: Path) -> dict[str, pd.DataFrame]:
    days = {}
    for path in sorted((lake / "clean_flows").glob("day=*/part-0.parquet")):
        days[path.parent.name.removeprefix("day=")] = pd.read_parquet(path, columns=COLUMNS)
    if not days:
        raise SystemExit(f"no clean_flows partitions under {lake}")
    return days


def realism(train: pd.DataFrame) -> dict:
    """How much of the training traffic goes to services more than one model uses."""
    signatures = lines.learn_signatures(train)
    services = signatures[signatures["kind"] == "service"]
    shared = services["models"].str.contains(";")
    flows_shared = services.loc[shared, "flows"].sum() / max(services["flows"].sum(), 1)
    infra = services["reason"] == "infrastructure port"
    return {
        "models": len(lines.known_models(signatures)),
        "service_keys": int(len(services)),
        "service_keys_shared_by_models": int(shared.sum()),
        "share_of_flows_to_shared_services": round(float(flows_shared), 4),
        "service_keys_on_infrastructure_ports": int(infra.sum()),
        "infrastructure_keys_shared": int((infra & shared).sum()),
        "levels": signatures.groupby("level").size().to_dict(),
        "shared_examples": services.loc[shared, ["rule_id", "models", "flows"]].head(8).to_dict("records"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", type=Path, required=True)
    parser.add_argument("--lines", type=int, default=40)
    parser.add_argument("--lines-csv", type=Path)
    parser.add_argument("--sampling", default="1,100,1000")
    parser.add_argument("--window-days", type=int, default=3)
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--leave-one-out", action="store_true")
    parser.add_argument("--realism", action="store_true")
    parser.add_argument("--json", type=Path, help="write the metrics here")
    args = parser.parse_args()
    rates = lines.parse_sampling_rates(args.sampling)

    t0 = time.perf_counter()
    days = read_lake(args.lake)
    names = sorted(days)
    train_days, eval_days = time_split(names, args.train_fraction)
    macs = sorted(set().union(*(set(f["device_mac"]) for f in days.values())))
    if args.lines_csv:
        membership = lines.parse_membership(pd.read_csv(args.lines_csv, dtype=str), str(args.lines_csv))
    else:
        membership = lines.synthetic_lines(macs, date.fromisoformat(names[0]), date.fromisoformat(names[-1]),
                                           lines=args.lines, seed=args.seed)
    views = pd.concat([lines.line_views(f, membership, d, rates, args.seed) for d, f in days.items()], ignore_index=True)
    truth = pd.concat([lines.line_truth(f, membership, d) for d, f in days.items()], ignore_index=True)
    train = pd.concat([days[d] for d in train_days], ignore_index=True)
    print(f"{len(names)} days ({train_days[0]}..{train_days[-1]} train, {eval_days[0]}..{eval_days[-1]} evaluate), "
          f"{len(macs)} devices on {membership['line_id'].nunique()} lines ({len(membership)} memberships), "
          f"{len(views):,} view rows; built in {time.perf_counter() - t0:.1f} s")
    for rate in rates:
        share = (views["sampling_rate"] == rate).sum() / max((views["sampling_rate"] == rates[0]).sum(), 1)
        print(f"  1:{rate}: {share:.3f} of the flows survive")

    if args.realism:
        print(json.dumps(realism(train), indent=2, default=str))

    signatures = lines.learn_signatures(train)
    print("rules:", signatures.groupby("level").size().to_dict())
    n_lines = membership["line_id"].nunique()
    for window in sorted({args.window_days, 1}, reverse=True):
        t1 = time.perf_counter()
        metrics = lines.evaluate(views, truth, signatures, eval_days, n_lines, window)
        print(f"\nwindow {window} day(s), eval {metrics['eval_range']} ({time.perf_counter() - t1:.1f} s)")
        print(f"{'rate':>6} {'recall':>7} {'model-lvl':>9} {'precision':>9} {'false/line-mo':>13} "
              f"{'ttd med h':>9} {'ttd p90 h':>9} {'never':>5} {'dev-days':>8}")
        for rate, m in metrics["sampling"].items():
            print(f"{'1:' + rate:>6} {m['recall']!s:>7} {m['recall_model_level']!s:>9} {m['precision']!s:>9} "
                  f"{m['false_per_line_month']!s:>13} {m['ttd_hours_median']!s:>9} {m['ttd_hours_p90']!s:>9} "
                  f"{m['ttd_never_detected']:>5} {m['device_days']:>8}")
        if window == args.window_days:
            main_metrics = metrics
            for rate, m in metrics["sampling"].items():
                weak = {k: (v.get("recall"), v.get("precision"), v.get("ttd_hours_median"))
                        for k, v in m["per_model"].items()
                        if (v.get("recall") is not None and v["recall"] < 0.95)
                        or (v.get("precision") is not None and v["precision"] < 0.99)}
                if weak:
                    print(f"  1:{rate} below target (recall, precision, ttd median): {weak}")
    if args.json:
        args.json.write_text(json.dumps(main_metrics, indent=2))

    if args.leave_one_out:
        print(f"\nleave one model out of training (window {args.window_days}), 1:{rates[len(rates) // 2]}")
        rate = str(rates[len(rates) // 2])
        models = lines.known_models(signatures)
        rows = []
        for model in models:
            held = lines.learn_signatures(train[train["device_name"] != model])
            m = lines.evaluate(views, truth, held, eval_days, n_lines, args.window_days)["sampling"][rate]
            caused = m["false_detections"]
            rows.append((model, m["recall"], m["precision"], m["false_per_line_month"], m["ttd_hours_median"], caused))
            print(f"  without {model:<40} recall {m['recall']!s:>6} precision {m['precision']!s:>6} "
                  f"false/line-mo {m['false_per_line_month']!s:>6} ttd median {m['ttd_hours_median']!s:>6} h")
        recalls = [r[1] for r in rows if r[1] is not None]
        precisions = [r[2] for r in rows if r[2] is not None]
        print(f"  worst recall {min(recalls) if recalls else None}, worst precision "
              f"{min(precisions) if precisions else None}, mean false/line-month {np.mean([r[3] for r in rows]):.3f}")


if __name__ == "__main__":
    main()
