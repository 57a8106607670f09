"""Behind the NAT: device models per subscriber line, measured on a lake of clean flows.

    python benchmarks/lines_eval.py --lake /work/lakes/sample/lake --realism --explain
    python benchmarks/lines_eval.py --lake /work/lakes/real/lake --leave-one-out

Reads `<lake>/clean_flows/day=*/part-0.parquet`, puts the devices on synthetic lines (or
the lines of `--lines-csv`), builds the line views at each sampling rate, learns the
endpoint signatures on the training days (the same time split as every model), and prints
device-day recall, precision, false presences per line-month and time to detect per rate
and sliding window. Options:

- `--leave-one-out`: train without each model in turn; its traffic stays on the lines, so
  every detection it causes is a false one, and its device-days are not counted for recall;
- `--refresh`: learn the signatures again for every evaluation day from all days before it
  (a lab that keeps running the devices), instead of once on the training days;
- `--shared-cloud K`: what if clouds packed tenants densely: every Internet IPv4 address
  a.b.c.d becomes a.b.(c mod K).d, so each /16 holds K /24s and models on one provider
  share /24s (the generated sample gives every device its own addresses);
- `--realism`: how many training services more than one model uses;
- `--explain`: per model, the packets a day its devices send to services its rules know,
  the daily detection chance packet sampling leaves from them, and the measured recall.
Not a test.
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

from iot_assets.core import subscriber_lines as lines  # noqa: E402
from iot_assets.core.splits import time_split  # noqa: E402
from iot_assets.synthetic.inject import read_episodes  # noqa: E402

COLUMNS = ["flow_start", "flow_end", "device_mac", "device_name", "remote_ip", "remote_port", "remote_scope",
           "protocol", "bytes_out", "bytes_in", "packets_out", "packets_in"]


def read_lake(lake: Path, last_day: str = "9999-12-31") -> dict[str, pd.DataFrame]:
    days = {}
    for path in sorted((lake / "clean_flows").glob("day=*/part-0.parquet")):
        day = path.parent.name.removeprefix("day=")
        if day <= last_day:
            days[day] = pd.read_parquet(path, columns=COLUMNS)
    if not days:
        raise SystemExit(f"no clean_flows partitions under {lake}")
    return days


def pack_clouds(flows: pd.DataFrame, k: int) -> pd.DataFrame:
    """Internet IPv4 peers a.b.c.d -> a.b.(c mod k).d: k /24s per /16."""
    ip = flows["remote_ip"].astype(str)
    parts = ip.str.split(".", expand=True)
    if parts.shape[1] != 4:
        return flows
    v4 = (flows["remote_scope"] == "internet") & parts[3].notna() & ~ip.str.contains(":", regex=False)
    third = pd.to_numeric(parts[2], errors="coerce")
    packed = parts[0] + "." + parts[1] + "." + (third % k).astype("Int64").astype(str) + "." + parts[3]
    return flows.assign(remote_ip=ip.where(~v4, packed))


def realism(observations: pd.DataFrame) -> dict:
    """How much of the training traffic goes to services more than one model uses."""
    signatures = lines.signatures_from_observations(observations)
    services = signatures[signatures["kind"] == "service"]
    shared = services["models"].str.contains(";")
    infra = services["reason"] == "infrastructure port"
    return {
        "models": len(lines.known_models(signatures)),
        "service_keys": int(len(services)),
        "service_keys_shared_by_models": int(shared.sum()),
        "share_of_flows_to_shared_services": round(float(services.loc[shared, "flows"].sum()
                                                         / max(services["flows"].sum(), 1)), 4),
        "service_keys_on_infrastructure_ports": int(infra.sum()),
        "levels": signatures.groupby("level").size().to_dict(),
        "shared_examples": services.loc[shared, ["rule_id", "models", "flows"]].head(8).to_dict("records"),
    }


class Experiment:
    """Views, truth and per-day service observations of one lake, built once."""

    def __init__(self, days: dict[str, pd.DataFrame], membership: pd.DataFrame, rates, seed: int, train_fraction: float,
                 episodes: pd.DataFrame | None = None, params: lines.SignatureParams = lines.SignatureParams()):
        self.names = sorted(days)
        self.train_days, self.eval_days = time_split(self.names, train_fraction)
        self.membership = membership
        self.rates = list(rates)
        self.views = {d: lines.line_views(f, membership, d, rates, seed) for d, f in days.items()}
        self.truth = pd.concat([lines.line_truth(f, membership, d) for d, f in days.items()], ignore_index=True)
        # The lab's ground truth, without the known attack episodes.
        self.observations = pd.concat([lines.service_observations(lines.outside_episodes(f, episodes))
                                       for f in days.values()], ignore_index=True)
        self.lines = int(membership["line_id"].nunique())
        self.params = params
        self.episodes = episodes

    def signatures(self, before: str, without: str | None = None) -> pd.DataFrame:
        obs = self.observations[self.observations["day"] < before]
        if without:
            obs = obs[obs["model"] != without]
        return lines.signatures_from_observations(obs, self.params)

    def hits(self, refresh: bool, without: str | None = None) -> tuple[pd.DataFrame, list[str]]:
        first = self.eval_days[0]
        trained = lines.known_models(self.signatures(first, without))
        if not refresh:
            views = pd.concat([self.views[d] for d in self.eval_days], ignore_index=True)
            return lines.rule_hits(views, self.signatures(first, without)), trained
        return pd.concat([lines.rule_hits(self.views[d], self.signatures(d, without)) for d in self.eval_days],
                         ignore_index=True), trained

    def evaluate(self, window: int, refresh: bool = False, without: str | None = None) -> dict:
        hits, trained = self.hits(refresh, without)
        return lines.evaluate_hits(hits, self.truth, trained, self.rates, self.eval_days, self.lines, window,
                                   episodes=self.episodes)


def print_table(metrics: dict) -> None:
    print(f"{'rate':>6} {'recall':>7} {'model-lvl':>9} {'precision':>9} {'false/line-mo':>13} "
          f"{'ttd med h':>9} {'ttd p90 h':>9} {'never':>5} {'dev-days':>8} {'detections':>10}")
    for rate, m in metrics["sampling"].items():
        print(f"{'1:' + rate:>6} {m['recall']!s:>7} {m['recall_model_level']!s:>9} {m['precision']!s:>9} "
              f"{m['false_per_line_month']!s:>13} {m['ttd_hours_median']!s:>9} {m['ttd_hours_p90']!s:>9} "
              f"{m['ttd_never_detected']:>5} {m['device_days']:>8} {m['detections']:>10}")


def explain(days: dict[str, pd.DataFrame], experiment: Experiment, metrics_1day: dict) -> None:
    """Per model: packets a day to services with a full-weight rule, and what sampling leaves of them."""
    signatures = experiment.signatures(experiment.eval_days[0])
    strong = signatures[(signatures["level"] == "model") & (signatures["weight"] >= 1.0) & (signatures["kind"] == "service")]
    rows = []
    for day in experiment.eval_days:
        flows = days[day][(days[day]["remote_scope"] == "internet") & days[day]["device_name"].notna()]
        keyed = flows.assign(prefix=lines.remote_prefix(flows["remote_ip"]), packets=flows["packets_out"] + flows["packets_in"])
        matched = keyed.merge(strong[["prefix", "remote_port", "protocol", "label"]],
                              on=["prefix", "remote_port", "protocol"])
        matched = matched[matched["label"] == matched["device_name"]]
        per_device = matched.groupby("device_name")["packets"].sum()
        for model in keyed["device_name"].unique():
            rows.append({"model": model, "day": day, "packets": int(per_device.get(model, 0))})
    table = pd.DataFrame(rows)
    print("\nper model, evaluation days: packets a day to services with a full-weight rule of the model; the chance "
          "that 1:N sampling keeps at least one of them, 1-(1-1/N)^packets (mean over days); measured device-day "
          "recall with a one-day window")
    print(f"{'model':<40} {'days':>4} {'median pk/day':>13} {'P 1:100':>8} {'rec 1:100':>9} {'P 1:1000':>8} {'rec 1:1000':>10}")
    for model, g in table.groupby("model"):
        p = g["packets"].to_numpy()
        predicted = {n: float(np.mean(1 - (1 - 1 / n) ** p)) for n in (100, 1000)}
        measured = {n: metrics_1day["sampling"].get(str(n), {}).get("per_model", {}).get(model, {}).get("recall")
                    for n in (100, 1000)}
        print(f"{model:<40} {len(g):>4} {np.median(p):>13,.0f} {predicted[100]:>8.3f} {measured[100]!s:>9} "
              f"{predicted[1000]:>8.3f} {measured[1000]!s:>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", type=Path, required=True)
    parser.add_argument("--last-day", default="9999-12-31", help="use the days up to this one only")
    parser.add_argument("--lines", type=int, default=40)
    parser.add_argument("--lines-csv", type=Path)
    parser.add_argument("--sampling", default="1,100,1000")
    parser.add_argument("--windows", default="3,1", help="sliding windows in days; the first is the headline")
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared-cloud", type=int, default=0, metavar="K")
    parser.add_argument("--refresh", action="store_true")
    parser.add_argument("--leave-one-out", action="store_true")
    parser.add_argument("--realism", action="store_true")
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--min-support-days", type=int, default=lines.SignatureParams.min_support_days)
    parser.add_argument("--crowding-bits", type=int, default=lines.SignatureParams.crowding_v4_bits,
                        help="divide a rule's weight by 1 + other models on its port in this wider IPv4 prefix (0: off)")
    parser.add_argument("--prefix-weight", type=float, default=lines.SignatureParams.prefix_weight)
    parser.add_argument("--episodes", type=Path, help="episodes.csv to leave out of training "
                        "(default: <lake>/../episodes/episodes.csv when present)")
    parser.add_argument("--json", type=Path, help="write the headline metrics here")
    args = parser.parse_args()
    rates = lines.parse_sampling_rates(args.sampling)
    windows = [int(w) for w in args.windows.split(",")]

    t0 = time.perf_counter()
    days = read_lake(args.lake, args.last_day)
    if args.shared_cloud:
        days = {d: pack_clouds(f, args.shared_cloud) for d, f in days.items()}
    names = sorted(days)
    macs = sorted(set().union(*(set(f["device_mac"]) for f in days.values())))
    if args.lines_csv:
        membership = lines.parse_membership(pd.read_csv(args.lines_csv, dtype=str, keep_default_na=False),
                                            str(args.lines_csv))
    else:
        membership = lines.synthetic_lines(macs, date.fromisoformat(names[0]), date.fromisoformat(names[-1]),
                                           lines=args.lines, seed=args.seed)
    episodes_path = args.episodes or args.lake.parent / "episodes" / "episodes.csv"
    episodes = read_episodes(episodes_path) if episodes_path.exists() else None
    if episodes is not None:
        print(f"leaving {len(episodes)} episodes of {episodes['device'].nunique()} devices out of training "
              f"({episodes_path})")
    params = lines.SignatureParams(min_support_days=args.min_support_days, prefix_weight=args.prefix_weight,
                                   crowding_v4_bits=args.crowding_bits)
    experiment = Experiment(days, membership, rates, args.seed, args.train_fraction, episodes, params)
    views = pd.concat(experiment.views.values(), ignore_index=True)
    print(f"{len(names)} days ({experiment.train_days[0]}..{experiment.train_days[-1]} train, "
          f"{experiment.eval_days[0]}..{experiment.eval_days[-1]} evaluate), {len(macs)} devices on "
          f"{experiment.lines} lines ({len(membership)} memberships), {len(views):,} view rows; "
          f"built in {time.perf_counter() - t0:.1f} s"
          + (f"; clouds packed to {args.shared_cloud} /24s per /16" if args.shared_cloud else ""))
    base = (views["sampling_rate"] == rates[0]).sum()
    print("  share of flows surviving sampling: " + ", ".join(
        f"1:{r} {(views['sampling_rate'] == r).sum() / max(base, 1):.3f}" for r in rates))
    if args.realism:
        train_obs = experiment.observations[experiment.observations["day"] <= experiment.train_days[-1]]
        print(json.dumps(realism(train_obs), indent=2, default=str))
    signatures = experiment.signatures(experiment.eval_days[0])
    print("rules:", signatures.groupby("level").size().to_dict())

    results = {}
    for window in windows:
        t1 = time.perf_counter()
        metrics = experiment.evaluate(window, args.refresh)
        results[window] = metrics
        first = next(iter(metrics["sampling"].values()))
        print(f"\nwindow {window} day(s){' refreshed daily' if args.refresh else ''}, eval {metrics['eval_range']}, "
              f"untrained device-days {metrics['untrained_device_days']}, device-days in attack episodes "
              f"{first['episode_device_days']} (recall on them " + ", ".join(
                  f"1:{r} {m['recall_in_episodes']}" for r, m in metrics["sampling"].items())
              + f") ({time.perf_counter() - t1:.1f} s)")
        print_table(metrics)
        for rate, m in metrics["sampling"].items():
            weak = {k: (v.get("recall"), v.get("precision"), v.get("ttd_hours_median"))
                    for k, v in m["per_model"].items()
                    if (v.get("recall") is not None and v["recall"] < 0.95)
                    or (v.get("precision") is not None and v["precision"] < 0.99)}
            if weak:
                print(f"  1:{rate} below target (recall, precision, ttd median): {weak}")
    if args.json:
        args.json.write_text(json.dumps(results[windows[0]], indent=2))
    if args.explain:
        explain(days, experiment, results[1] if 1 in results else experiment.evaluate(1, args.refresh))

    if args.leave_one_out:
        rate = "100" if 100 in rates else str(rates[-1])
        window = windows[0]
        print(f"\nleave one model out of training, window {window}, 1:{rate}"
              f"{', refreshed daily' if args.refresh else ''}")
        rows = []
        for model in lines.known_models(signatures):
            m = experiment.evaluate(window, args.refresh, without=model)["sampling"][rate]
            rows.append((model, m["recall"], m["precision"], m["false_per_line_month"], m["ttd_hours_median"]))
            print(f"  without {model:<40} recall {m['recall']!s:>6} precision {m['precision']!s:>6} "
                  f"false/line-mo {m['false_per_line_month']!s:>6} ttd median {m['ttd_hours_median']!s:>6} h "
                  f"(false detections {m['false_detections']})")
        recalls = [r[1] for r in rows if r[1] is not None]
        precisions = [r[2] for r in rows if r[2] is not None]
        print(f"  worst recall {min(recalls) if recalls else None}, worst precision "
              f"{min(precisions) if precisions else None}, mean false/line-month {np.mean([r[3] for r in rows]):.3f}")


if __name__ == "__main__":
    main()
