"""Served models change only by a recorded decision: the promotion log, the policy, `iot-assets models list|use`."""

import json

import dagster as dg
import pytest
from click.testing import CliRunner

from iot_assets.cli import main
from iot_assets.core import promotion
from iot_assets.io.models import JsonDocument, ModelStore, PromotionLogError, served_metadata, settle
from iot_assets.materialize import instance_yaml

CLASSIFIER_CHALLENGE = {  # as core.champion.compare_classifiers writes it
    "model": "device_classifier", "decision": "challenger", "reason": "better day-level accuracy",
    "holdout": ["2019-07-01", "2019-07-07"],
    "champion": {"day_accuracy": 0.9, "window_accuracy": 0.88, "version": "aaa"},
    "challenger": {"day_accuracy": 0.95, "window_accuracy": 0.87, "version": None},
}


def _reference(devices: int, first_day: str) -> JsonDocument:
    return JsonDocument({"train_range": [first_day, "2019-07-04"], "baselines": {},
                         "devices": {f"02:00:00:00:00:{i:02x}": {} for i in range(devices)}})


def _saved(store: ModelStore, model) -> str:
    version, _ = store.save("drift_reference", model)
    return version


def test_the_policy_serves_first_trainings_and_re_baselines_and_proposes_the_rest():
    assert promotion.decide(promotion.CHALLENGE, has_served_version=False, auto_promote=False) == "promoted"
    for kind in (promotion.REBASELINE, promotion.FOLLOWS, promotion.USER):
        assert promotion.decide(kind, True, False) == "promoted"
    for kind in (promotion.CHALLENGE, promotion.RETRAIN):
        assert promotion.decide(kind, True, auto_promote=False) == "proposed"
        assert promotion.decide(kind, True, auto_promote=True) == "promoted"
    with pytest.raises(ValueError, match="unknown candidate kind 'guess'"):
        promotion.decide("guess", True, False)


def test_a_challenge_reason_names_the_rule_and_both_sides_figures():
    assert promotion.challenge_reason(CLASSIFIER_CHALLENGE) == (
        "challenger better: better day-level accuracy (day_accuracy 0.900 -> 0.950, window_accuracy 0.880 -> 0.870) "
        "on the holdout 2019-07-01..2019-07-07")


def test_every_change_of_the_served_version_is_one_record_and_a_better_challenger_is_only_proposed(tmp_path):
    store = ModelStore(str(tmp_path))
    first = _saved(store, _reference(2, "2019-06-25"))
    entry = settle(store, "drift_reference", first, None, ["2019-06-25", "2019-07-04"], auto_promote=False)
    assert (entry["event"], entry["from_version"], entry["to_version"], entry["reason"]) == (
        "promoted", None, first, "first training on 2019-06-25..2019-07-04")
    assert entry["from_metrics"] is None and entry["to_metrics"]["devices"] == 2
    assert entry["at"].endswith("Z") and entry["at"][:2] == "20"

    # Built again unchanged (same content, same version): no record.
    assert settle(store, "drift_reference", first, None, None, auto_promote=False) is None

    # A better challenger with automatic promotion off: proposed, the served version stays.
    challenger = _saved(store, _reference(3, "2019-06-27"))
    candidate = promotion.Candidate(promotion.CHALLENGE, promotion.challenge_reason(CLASSIFIER_CHALLENGE),
                                    {"challenge": promotion.challenge_figures(CLASSIFIER_CHALLENGE)})
    proposed = settle(store, "drift_reference", challenger, candidate, None, auto_promote=False)
    assert proposed["event"] == "proposed" and store.current("drift_reference") == first
    assert (proposed["from_version"], proposed["to_version"]) == (first, challenger)
    assert (proposed["from_metrics"]["devices"], proposed["to_metrics"]["devices"]) == (2, 3)
    assert proposed["challenge"]["challenger"]["day_accuracy"] == 0.95
    assert settle(store, "drift_reference", challenger, candidate, None, auto_promote=False) is None  # once
    metadata = served_metadata(store, "drift_reference", challenger)
    assert metadata["served_version"] == first and metadata["served_reason"].startswith("first training")
    assert metadata["this_version"].startswith(f"proposed, not served: `iot-assets models use drift_reference {challenger}`")

    # With the policy on, the same kind of candidate is served at once, and says the policy served it.
    third = _saved(store, _reference(4, "2019-06-28"))
    promoted = settle(store, "drift_reference", third, candidate, None, auto_promote=True)
    assert promoted["event"] == "promoted" and store.current("drift_reference") == third
    assert promoted["reason"].endswith("(automatic promotion is on)") and promoted["from_version"] == first

    log = (tmp_path / "models" / "drift_reference" / "promotions.jsonl").read_text().splitlines()
    assert [(json.loads(line)["event"], json.loads(line)["to_version"]) for line in log] == [
        ("promoted", first), ("proposed", challenger), ("promoted", third)]


def test_a_first_drift_reference_names_the_detector_it_follows_and_models_use_serves_it_with_its_detector(tmp_path):
    env = {"IOT_ASSETS_DATA_DIR": str(tmp_path)}
    store = ModelStore(str(tmp_path))
    references = [_saved(store, _reference(n, "2019-06-25")) for n in (1, 2)]
    detectors = ["d" * 12, "e" * 12]
    for detector in detectors:  # two detector versions, saved as files a detector would leave
        (tmp_path / "models" / "anomaly_detector" / detector).mkdir(parents=True)
        (tmp_path / "models" / "anomaly_detector" / detector / "kind.json").write_text('{"kind": "AnomalyDetector"}')
    store.promote("anomaly_detector", detectors[0], "test")
    for reference, detector in zip(references, detectors):
        follows = promotion.Candidate(promotion.FOLLOWS, f"follows anomaly_detector {detector}", {"follows": detector})
        settle(store, "drift_reference", reference, follows, ["2019-06-25", "2019-07-04"], auto_promote=False)
    first, second = store.promotions("drift_reference")
    assert first["reason"] == f"first training on 2019-06-25..2019-07-04; follows anomaly_detector {detectors[0]}"
    assert (first["follows"], second["follows"], second["kind"]) == (detectors[0], detectors[1], "follows")
    # Serving the first detector again serves the reference built for it.
    store.promote("anomaly_detector", detectors[1], "test")
    used = CliRunner().invoke(main, ["models", "use", "anomaly_detector", detectors[0]], env=env)
    assert used.exit_code == 0, used.output
    assert f"drift_reference: now serving {references[0]}, built for {detectors[0]}" in used.output
    assert store.current("drift_reference") == references[0]


def test_models_use_promotes_a_proposal_or_rolls_back_with_its_reason_and_list_shows_it(tmp_path):
    env = {"IOT_ASSETS_DATA_DIR": str(tmp_path)}
    store = ModelStore(str(tmp_path))
    first = _saved(store, _reference(2, "2019-06-25"))
    settle(store, "drift_reference", first, None, ["2019-06-25", "2019-07-04"], auto_promote=False)
    second = _saved(store, _reference(3, "2019-06-27"))
    settle(store, "drift_reference", second, None, ["2019-06-27", "2019-07-04"], auto_promote=False)
    assert store.current("drift_reference") == first

    listed = CliRunner().invoke(main, ["models", "list", "drift_reference"], env=env)
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0] == "drift_reference: 2 version(s); automatic promotion off (IOT_ASSETS_AUTO_PROMOTE)"
    assert lines[1].split()[:3] == ["version", "trained", "on"]
    served_line, proposed_line = lines[2], lines[3]
    assert served_line.startswith(f"* {first}  2019-06-25..2019-07-04  2 devices")
    assert served_line.endswith("first training on 2019-06-25..2019-07-04")
    assert proposed_line.startswith(f"  {second}  2019-06-27..2019-07-04  3 devices") and " proposed 20" in proposed_line
    assert "retrained on the time split 2019-06-27..2019-07-04, not compared with the served version" in proposed_line

    home = tmp_path / "dagster_home"  # the instance `iot-assets run` made: the UI shows the promotion
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml())
    used = CliRunner().invoke(main, ["models", "use", "drift_reference", second], env=env)
    assert used.exit_code == 0, used.output
    (record,) = [r for r in store.promotions("drift_reference") if r["kind"] == promotion.USER]
    assert record["reason"].startswith("promoted by user: proposed 20")
    assert (record["from_version"], record["to_version"]) == (first, second)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (observed,) = instance.fetch_observations(dg.AssetKey("drift_reference"), limit=5).records
    metadata = observed.asset_observation.metadata
    assert (metadata["served_version"].value, metadata["previous_version"].value) == (second, first)
    assert metadata["served_reason"].value == record["reason"] and metadata["served_since"].value == record["at"]

    back = CliRunner().invoke(main, ["models", "use", "drift_reference", first, "--reason", "drift alerts on every day"],
                              env=env)
    assert back.exit_code == 0 and f"now serving {first} instead of {second}" in back.output
    assert store.promotions("drift_reference")[-1]["reason"] == "drift alerts on every day"
    rolled = CliRunner().invoke(main, ["models", "use", "drift_reference", second], env=env)
    assert store.promotions("drift_reference")[-1]["reason"] == f"rollback by user from {first}", rolled.output
    again = CliRunner().invoke(main, ["models", "use", "drift_reference", second], env=env)
    assert "served already; nothing changed" in again.output and len(store.promotions("drift_reference")) == 5

    listed = CliRunner().invoke(main, ["models", "list", "drift_reference"], env=env)
    assert listed.output.splitlines()[3].startswith(f"* {second}")
    assert listed.output.splitlines()[2].split()[4:7] == ["was", "served", "from"]
    missing = CliRunner().invoke(main, ["models", "use", "drift_reference", "000000000000"], env=env)
    assert missing.exit_code == 1 and "has no version 000000000000" in missing.output


def test_a_broken_promotion_log_line_is_named(tmp_path):
    store = ModelStore(str(tmp_path))
    version = _saved(store, _reference(1, "2019-06-25"))
    store.promote("drift_reference", version, "test")
    path = tmp_path / "models" / "drift_reference" / "promotions.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(PromotionLogError, match=r"promotions\.jsonl line 2: not a JSON record"):
        store.promotions("drift_reference")
    listed = CliRunner().invoke(main, ["models", "list", "drift_reference"], env={"IOT_ASSETS_DATA_DIR": str(tmp_path)})
    assert listed.exit_code == 1 and "line 2: not a JSON record" in listed.output


def test_the_end_of_a_run_names_each_pending_proposal_and_the_command_that_serves_it(tmp_path):
    from iot_assets.cli import _pending_proposals

    store = ModelStore(str(tmp_path))
    first = _saved(store, _reference(2, "2019-06-25"))
    settle(store, "drift_reference", first, None, ["2019-06-25", "2019-07-04"], auto_promote=False)
    assert _pending_proposals(str(tmp_path)) == [] and store.pending_proposals("drift_reference") == []
    challenger = _saved(store, _reference(3, "2019-06-27"))
    candidate = promotion.Candidate(promotion.CHALLENGE, promotion.challenge_reason(CLASSIFIER_CHALLENGE))
    settle(store, "drift_reference", challenger, candidate, None, auto_promote=False)
    assert [e["to_version"] for e in store.pending_proposals("drift_reference")] == [challenger]
    assert _pending_proposals(str(tmp_path)) == [
        f"PROPOSED drift reference {challenger} to replace {first}: {promotion.challenge_reason(CLASSIFIER_CHALLENGE)}; "
        f"serve it with `iot-assets models use drift_reference {challenger}`"]
    # Decided on: promoted by the user, nothing pending any more.
    store.promote("drift_reference", challenger, "promoted by user")
    assert _pending_proposals(str(tmp_path)) == []
