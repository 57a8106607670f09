"""The lake as the asset graph sees it: whole runs on small landing zones, stale days, range changes, versions."""

import json
import os
import shutil
import subprocess
import sys
from datetime import date

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from iot_assets.core import promotion
from iot_assets.io.models import ModelStore
from iot_assets.materialize import Outcome, materialize_missing
from iot_assets.synthetic import sample
from iot_assets_tests.support.definitions import definitions_for, pseudonymiser_for

DAYS = [f"2019-06-{d}" for d in range(25, 29)]


def build(data, days=DAYS, **env) -> tuple[dg.Definitions, dg.DagsterInstance, Outcome]:
    defs = definitions_for(data, **env)
    instance = dg.DagsterInstance.ephemeral()
    messages = []
    outcome = Outcome(messages.append, strict=False)
    materialize_missing(defs, instance, days, outcome, 7, str(data))
    return defs, instance, outcome


def lake_days(data, asset) -> list[str]:
    return sorted(p.name.removeprefix("day=") for p in (data / "lake" / asset).iterdir())


@pytest.mark.slow
def test_a_single_device_is_a_valid_landing_zone(tmp_path):
    data = tmp_path / "data"
    sample.generate(data / "raw", date(2019, 6, 25), 4, scale=0.03, seed=3, devices=["nature_remo"])
    _, _, outcome = build(data)
    assert outcome.problems == []
    inventory = pd.read_parquet(data / "lake" / "device_inventory")
    assert set(inventory["predicted_device"]) == {"Nature Remo"} and len(inventory) == 4
    scores = pd.read_parquet(data / "lake" / "anomaly_scores")
    assert scores["has_model"].any()


@pytest.mark.slow
def test_thirty_minute_windows_are_honoured_by_every_behaviour_asset(tmp_path):
    data = tmp_path / "data"
    sample.generate(data / "raw", date(2019, 6, 25), 4, scale=0.03, seed=3, devices=["nature_remo", "qrio_hub"])
    _, _, outcome = build(data, IOT_ASSETS_WINDOW_MINUTES="30")
    assert outcome.problems == []
    windows = pd.read_parquet(data / "lake" / "device_windows" / "day=2019-06-26")
    per_device = windows.groupby("device_key")["window_start"].nunique()
    assert per_device.max() == 48  # a day holds 48 half-hour windows
    assert set(windows["window_start"].dt.minute) == {0, 30}
    scores = pd.read_parquet(data / "lake" / "anomaly_scores" / "day=2019-06-28")
    assert set(scores["window_start"].dt.minute) == {0, 30} and scores["has_model"].all()
    metrics = json.loads((data / "reports" / "anomaly_metrics.json").read_text())
    assert metrics["window_minutes"] == 30 and metrics["devices_modelled"] == 2


@pytest.mark.slow
def test_days_no_archive_covers_are_emptied_and_training_ignores_them(tmp_path):
    data = tmp_path / "data"
    sample.generate(data / "raw", date(2019, 6, 25), 4, scale=0.02, seed=3, devices=["nature_remo", "qrio_hub"])
    defs, instance, outcome = build(data)
    assert outcome.problems == []
    # The hub's archive is removed and the Remo's replaced by a version covering only the first two days.
    (data / "raw" / "qrio_hub.tar.gz").unlink()
    shorter = tmp_path / "shorter"
    sample.generate(shorter, date(2019, 6, 25), 2, scale=0.02, seed=4, devices=["nature_remo"])
    shutil.copy(shorter / "nature_remo.tar.gz", data / "raw" / "nature_remo.tar.gz")
    messages = []
    materialize_missing(defs, instance, DAYS, Outcome(messages.append, strict=False), 7, str(data))
    for day in DAYS[2:]:
        assert len(pd.read_parquet(data / "lake" / "clean_flows" / f"day={day}")) == 0, day
    clean = pd.read_parquet(data / "lake" / "clean_flows")
    assert set(clean["device_name"]) == {"Nature Remo"}
    # Only the versions the current archives refer to stay staged.
    assert sorted(p.name for p in (data / "staging").iterdir() if not p.name.startswith(".")) == ["nature_remo"]
    assert len(list((data / "staging" / "nature_remo").iterdir())) == 1


@pytest.mark.slow
def test_a_shrunk_range_prunes_the_days_outside_it(tmp_path):
    data = tmp_path / "data"
    sample.generate(data / "raw", date(2019, 6, 25), 4, scale=0.02, seed=3, devices=["nature_remo", "qrio_hub"])
    build(data)
    assert lake_days(data, "clean_flows") == DAYS
    # The range is read when the code location is imported: a new process with the shorter range.
    env = {**os.environ, "IOT_ASSETS_DATA_DIR": str(data), "IOT_ASSETS_END_DATE": DAYS[1]}
    script = ("import dagster as dg; from iot_assets.definitions import defs; defs = defs(); "
              "r = defs.resolve_job_def('ingest_archives_job').execute_in_process(instance=dg.DagsterInstance.ephemeral()); "
              "print(r.asset_materializations_for_node('raw_archives')[0].metadata['pruned_outside_range'].value)")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for asset in ("clean_flows", "device_windows", "anomaly_scores", "device_inventory"):
        assert lake_days(data, asset) == DAYS[:2], asset


@pytest.mark.slow
def test_models_are_versioned_and_a_pin_rolls_back(tmp_path):
    data = tmp_path / "data"
    sample.generate(data / "raw", date(2019, 6, 25), 4, scale=0.02, seed=3, devices=["nature_remo", "qrio_hub"])
    defs, instance, _ = build(data)
    store = ModelStore(str(data))
    first = store.current("device_classifier")
    (trained,) = store.promotions("device_classifier")
    assert (trained["event"], trained["from_version"], trained["to_version"]) == ("promoted", None, first)
    assert trained["reason"].startswith("first training on 2019-06-25..")
    # Retrain with another seed: a new version beside the old one, only proposed (automatic promotion is off).
    build(data, IOT_ASSETS_SEED="5")
    proposal = store.promotions("device_classifier")[-1]
    second = proposal["to_version"]
    assert (proposal["event"], proposal["from_version"]) == ("proposed", first) and first != second
    assert "not compared with the served version" in proposal["reason"]
    assert store.current("device_classifier") == first and set(store.versions("device_classifier")) >= {first, second}
    assert set(pd.read_parquet(data / "lake" / "device_inventory")["model_version"]) == {first}
    # With the policy on, a retrain is served at once, and the record says the policy served it.
    build(data, IOT_ASSETS_SEED="5", IOT_ASSETS_AUTO_PROMOTE="on")
    promoted = store.promotions("device_classifier")[-1]
    second = promoted["to_version"]
    assert (promoted["event"], promoted["from_version"]) == ("promoted", first) and second != first
    assert promoted["reason"].endswith("(automatic promotion is on)") and store.current("device_classifier") == second
    assert promoted["from_metrics"]["accuracy"] is not None and promoted["to_metrics"]["train_range"][0] == DAYS[0]
    assert set(pd.read_parquet(data / "lake" / "device_inventory")["model_version"]) == {second}
    # Pinning the first version serves it again.
    pinned = definitions_for(data, IOT_ASSETS_MODEL_PINS=f"device_classifier={first}")
    job = pinned.resolve_job_def("daily_scoring_job")
    assert job.execute_in_process(instance=instance, partition_key=DAYS[-1]).success
    inventory = pd.read_parquet(data / "lake" / "device_inventory" / f"day={DAYS[-1]}")
    assert set(inventory["model_version"]) == {first}


@pytest.mark.slow
def test_an_injected_scan_is_an_incident_of_its_device_on_its_day(tmp_path):
    from iot_assets.core.archive import find_archives
    from iot_assets.synthetic.inject import inject

    data, generated = tmp_path / "data", tmp_path / "generated"
    devices = ["nature_remo", "qrio_hub", "xiaomi_mijia_led"]
    sample.generate(generated, date(2019, 6, 25), 6, scale=0.05, seed=3, devices=devices)
    (data / "raw").mkdir(parents=True)
    for name in devices[1:]:
        shutil.copy(generated / f"{name}.tar.gz", data / "raw")
    remo = next(a for a in find_archives(generated)[0] if a.name == "nature_remo")
    _, episodes = inject(remo, data / "raw", seed=2, types=("scan",))
    shutil.move(data / "raw" / "episodes.csv", tmp_path / "episodes.csv")
    (scan,) = episodes
    days = [f"2019-06-{d}" for d in range(25, 31)]
    _, _, outcome = build(data, days, IOT_ASSETS_END_DATE=days[-1], IOT_ASSETS_EPISODES=str(tmp_path / "episodes.csv"))
    assert outcome.problems == [] and lake_days(data, "anomaly_incidents") == days

    day = scan.start.strftime("%Y-%m-%d")
    found = pd.read_parquet(data / "lake" / "anomaly_incidents" / f"day={day}")
    remo_incidents = found[found["device_name"] == "Nature Remo"]
    overlapping = remo_incidents[(remo_incidents["start"] < scan.end) & (remo_incidents["end"] > scan.start)]
    assert len(overlapping) == 1 and overlapping["kind"].iloc[0] == "scan-like"
    assert overlapping["new_peers"].iloc[0] > 10  # the scan's targets, never seen outside it
    assert set(found["model_version"]) == {ModelStore(str(data)).current("anomaly_detector")}
    metrics = json.loads((data / "reports" / "anomaly_metrics.json").read_text())
    assert metrics["incidents"]["per_episode_type"]["scan"]["recall"] == 1.0
    assert metrics["incidents"]["per_episode_type"]["scan"]["delay_minutes_median"] < 60
    assert set(metrics["per_device"]) == {"Nature Remo", "Qrio Hub", "Xiaomi Mijia LED"}
    # The two evaluation days of the devices without an episode are clean windows, few of them flagged.
    for name in ("Qrio Hub", "Xiaomi Mijia LED"):
        assert metrics["per_device"][name]["clean_windows"] == 48 and metrics["per_device"][name]["fpr_clean"] <= 0.05
    page = (data / "reports" / "daily" / f"{day}.html").read_text()
    assert "<h2>Incidents</h2>" in page and "scan-like" in page
    attention = page[page.index("Needs attention"):page.index("</section>")]
    assert "Nature Remo: scan-like incident" in attention


@pytest.mark.slow
def test_a_challenge_serves_the_better_model_and_says_why(tmp_path, monkeypatch):
    from iot_assets.defs.automation import sensors as automation

    data = tmp_path / "data"
    days = [f"2019-06-{d}" for d in range(25, 31)]
    sample.generate(data / "raw", date(2019, 6, 25), 6, scale=0.03, seed=3,
                    devices=["nature_remo", "qrio_hub", "xiaomi_mijia_led"])
    defs, instance, outcome = build(data, days, IOT_ASSETS_END_DATE=days[-1])
    assert outcome.problems == []
    store = ModelStore(str(data))
    before = {asset: store.current(asset) for asset in ("device_classifier", "anomaly_detector")}

    # The drift sensor asks for a challenge once enough of a day's devices drifted.
    sensor = defs.get_sensor_def("drift_retraining_sensor")
    monkeypatch.setattr(automation, "RETRAIN_DRIFTED_SHARE", 1.01)
    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        assert list(sensor.evaluate_tick(context).run_requests) == []
    monkeypatch.setattr(automation, "RETRAIN_DRIFTED_SHARE", 0.0)
    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        (request,) = sensor.evaluate_tick(context).run_requests
    assert request.run_config == automation.CHALLENGE_RUN_CONFIG

    challenge = {"challenge": True, "window_days": 2, "holdout_days": 2}
    config = {"ops": {name: {"config": challenge} for name in ("device_classifier", "anomaly_detector")}}
    # Automatic promotion off (the default): a better challenger is proposed and the served version stays.
    proposed = defs.resolve_job_def("training_job").execute_in_process(instance=instance, run_config=config)
    assert proposed.success
    for asset in ("device_classifier", "anomaly_detector"):
        figures = json.loads((data / "reports" / ("classifier_challenge.json" if asset == "device_classifier"
                                                  else "anomaly_challenge.json")).read_text())
        assert store.current(asset) == before[asset]
        if figures["decision"] == "challenger":
            proposal = store.promotions(asset)[-1]
            assert (proposal["event"], proposal["from_version"]) == ("proposed", before[asset])
            assert proposal["reason"] == promotion.challenge_reason(figures)
            assert proposal["challenge"]["holdout"] == days[-2:]
            this_version = proposed.asset_materializations_for_node(asset)[0].metadata["this_version"].value
            assert this_version.startswith("proposed, not served: `iot-assets models use")
    # With the policy on, the same challenge serves the better model.
    defs = definitions_for(data, IOT_ASSETS_END_DATE=days[-1], IOT_ASSETS_AUTO_PROMOTE="on")
    result = defs.resolve_job_def("training_job").execute_in_process(instance=instance, run_config=config)
    assert result.success
    for asset, report in (("device_classifier", "classifier_challenge.json"), ("anomaly_detector", "anomaly_challenge.json")):
        figures = json.loads((data / "reports" / report).read_text())
        assert figures["holdout"] == days[-2:] and figures["champion"]["version"] == before[asset]
        decision = result.asset_materializations_for_node(asset)[0].metadata["decision"].value
        served = store.load(asset, store.current(asset))
        if figures["decision"] == "champion":
            assert decision == f"champion kept: {figures['reason']}"
            assert served.version == before[asset]
        else:
            assert decision == f"challenger better (served or proposed: see this_version): {figures['reason']}"
            assert result.asset_materializations_for_node(asset)[0].metadata["this_version"].value == "served"
            assert served.version != before[asset] and served.metrics["challenge"] == figures
            assert served.metrics["train_range"] == days[2:4]
            promoted = store.promotions(asset)[-1]
            assert (promoted["event"], promoted["from_version"], promoted["to_version"]) == (
                "promoted", before[asset], served.version)
            assert promoted["reason"] == promotion.challenge_reason(figures) + " (automatic promotion is on)"
    # The drift reference describes the days of the detector served with it.
    reference = store.load("drift_reference", store.current("drift_reference"))
    assert reference["train_range"] == store.load("anomaly_detector", store.current("anomaly_detector")).metrics["train_range"]


@pytest.mark.slow
def test_an_acknowledged_change_re_baselines_the_device_and_only_it(tmp_path):
    data = tmp_path / "data"
    days = [f"2019-06-{d}" for d in range(25, 31)]
    sample.generate(data / "raw", date(2019, 6, 25), 6, scale=0.03, seed=3,
                    devices=["nature_remo", "qrio_hub", "xiaomi_mijia_led"])
    real_qrio = "80:c5:f2:0b:aa:a9"  # the analyst writes the real MAC; the outputs name its pseudonym
    acknowledgements = tmp_path / "acknowledgements.csv"
    acknowledgements.write_text(f"device_mac,from_day\n{real_qrio},2019-06-29\n")
    defs, instance, outcome = build(data, days, IOT_ASSETS_END_DATE=days[-1],
                                    IOT_ASSETS_ACKNOWLEDGEMENTS=str(acknowledgements))
    qrio = pseudonymiser_for(data).mac(real_qrio, "2019-06-29")
    assert qrio != real_qrio
    assert outcome.problems == []
    decisions = pd.read_parquet(data / "lake" / "rebaseline_decisions" / "part-0.parquet")
    assert decisions[["device_key", "device_name", "from_day", "reason"]].to_dict("records") == [
        {"device_key": qrio, "device_name": "Qrio Hub", "from_day": "2019-06-29", "reason": "acknowledged"}]
    store = ModelStore(str(data))
    before = store.load("anomaly_detector", store.current("anomaly_detector"))
    reference_before = store.load("drift_reference", store.current("drift_reference"))

    # The sensor turns the decision into a rebaseline run of the detector and the drift reference.
    sensor = defs.get_sensor_def("rebaseline_sensor")
    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        (request,) = sensor.evaluate_tick(context).run_requests
    assert request.run_config == {"ops": {"anomaly_detector": {"config": {"rebaseline": [f"{qrio}@2019-06-29"]}}}}
    job = defs.resolve_job_def(request.job_name or "rebaseline_job")
    assert job.execute_in_process(instance=instance, run_config=request.run_config).success
    after = store.load("anomaly_detector", store.current("anomaly_detector"))
    assert after.version != before.version
    # A re-baseline is served (the run was asked for), recorded with its device; the drift reference follows.
    rebaselined = store.promotions("anomaly_detector")[-1]
    assert (rebaselined["event"], rebaselined["from_version"], rebaselined["to_version"]) == (
        "promoted", before.version, after.version)
    assert rebaselined["reason"] == f"rebaseline of {qrio} from 2019-06-29" and rebaselined["kind"] == "rebaseline"
    follows = store.promotions("drift_reference")[-1]
    assert follows["reason"] == f"follows anomaly_detector {after.version}" and follows["follows"] == after.version
    assert after.metrics["baselines"] == {qrio: {"from_day": "2019-06-29", "until": "2019-06-30"}}
    # Only the acknowledged device got a new normal, in the detector and in the drift reference.
    changed = [mac for mac in before.devices if not np.array_equal(before.devices[mac].center, after.devices[mac].center)]
    assert changed == [qrio]
    reference = store.load("drift_reference", store.current("drift_reference"))
    assert reference["baselines"] == after.metrics["baselines"]
    assert [m for m in reference_before["devices"] if reference["devices"][m] != reference_before["devices"][m]] == [qrio]

    # Rescored by the new version, the acknowledged change is handled: nothing more to decide.
    assert defs.resolve_job_def("daily_scoring_job").execute_in_process(
        instance=instance, tags={"dagster/asset_partition_range_start": days[0],
                                 "dagster/asset_partition_range_end": days[-1]}).success
    assert defs.resolve_job_def("reports_job").execute_in_process(instance=instance).success
    assert pd.read_parquet(data / "lake" / "rebaseline_decisions" / "part-0.parquet").empty


DAILY_FLOW_TABLES = ("decoded_flows", "clean_flows", "clean_rejects", "flow_sample", "device_windows", "device_services",
                     "line_views", "line_truth")


def test_a_ranged_run_writes_each_day_as_single_day_runs_do(tmp_path):
    """Days built one at a time as the lake writes them (`DaysBuilt`): the same tables as a run per day."""
    from iot_assets.defs.automation.sensors import range_tags

    days = DAYS[:2]
    data = tmp_path / "data"
    sample.generate(data / "raw", date(2019, 6, 25), len(days), scale=0.02, seed=3, devices=["nature_remo", "qrio_hub"])
    # One landing zone ingested once (an ingest and a definitions build are most of this test's time): the days
    # are built a run per day, what those runs wrote is moved aside, and the ranged run builds them again.
    defs, instance = definitions_for(data), dg.DagsterInstance.ephemeral()
    assert defs.resolve_job_def("ingest_archives_job").execute_in_process(instance=instance).success
    ingested = set((data / "lake").iterdir())
    flows = defs.resolve_job_def("daily_flows_job")
    for day in days:  # in order: a day's windows take the day before as context
        assert flows.execute_in_process(instance=instance, partition_key=day).success
    (tmp_path / "single" / "lake").mkdir(parents=True)
    for table in set((data / "lake").iterdir()) - ingested:
        shutil.move(table, tmp_path / "single" / "lake" / table.name)
    result = flows.execute_in_process(instance=instance, tags=range_tags(days[0], days[-1]))
    assert result.success
    shutil.move(data, tmp_path / "ranged")
    windows_metadata = {m.partition: m.metadata for m in result.asset_materializations_for_node("device_windows")}
    for asset in DAILY_FLOW_TABLES:
        assert lake_days(tmp_path / "ranged", asset) == lake_days(tmp_path / "single", asset) == days, asset
        for day in days:
            ranged, single = (pd.read_parquet(tmp_path / mode / "lake" / asset / f"day={day}")
                              for mode in ("ranged", "single"))
            pd.testing.assert_frame_equal(ranged, single, check_exact=True, obj=f"{asset} {day}")
            if asset == "device_windows":
                assert len(ranged) > 0 and ranged["window_start"].min() >= pd.Timestamp(day, tz="UTC")
    # Each day's materialization carries that day's figures; `days` is the run's.
    for day in days:
        windows = len(pd.read_parquet(tmp_path / "ranged" / "lake" / "device_windows" / f"day={day}"))
        metadata = windows_metadata[day]
        assert metadata["windows"].value == metadata["dagster/row_count"].value == windows
        assert metadata["days"].value == len(days)
