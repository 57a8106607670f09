"""Models as immutable versions, in formats that do not execute code on load.

`<base>/models/<asset>/<version>/` holds the files a model writes itself (`to_files()`:
XGBoost JSON, NPZ arrays read with `allow_pickle=False`, JSON), `metrics.json` when the model
carries metrics, and `<base>/models/<asset>/current.json` names the version in use. The version is
the content hash of the files, so the same model is the same version wherever it was trained.
`<base>/models/<asset>/promotions.jsonl` records every change of the served version and every
proposal, one JSON object a line (iot_assets.core.promotion says when a new version is served).

Loading takes the pinned version when one is configured (`IOT_ASSETS_MODEL_PINS`, e.g.
`device_classifier=3f2a9c1d0b7e`), the current one otherwise. Rolling back is pinning an older
version, or pointing `current.json` at it (`iot-assets models use ASSET VERSION`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable

import dagster as dg
from upath import UPath

from iot_assets.core import promotion
from iot_assets.io.location import base_path, write_bytes_atomic, write_text_atomic

CURRENT = "current.json"
PROMOTIONS = "promotions.jsonl"
HASHES = "sha256.json"  # in each version folder: the SHA-256 of every other file, checked on load


class ModelTampered(Exception):
    """A saved model version whose files no longer hash to its version: it is not served."""


class JsonDocument(dict):
    """A model that is plain data (the drift reference): one JSON file."""

    def to_files(self) -> dict[str, bytes]:
        return {"document.json": json.dumps(self, sort_keys=True).encode()}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> "JsonDocument":
        return cls(json.loads(files["document.json"]))


def _loaders() -> dict[str, Callable[[dict[str, bytes]], object]]:
    from iot_assets.core.anomaly import AnomalyDetector
    from iot_assets.core.classifier import DeviceClassifier

    return {"DeviceClassifier": DeviceClassifier.from_files, "AnomalyDetector": AnomalyDetector.from_files,
            "JsonDocument": JsonDocument.from_files}


def model_files(model) -> dict[str, bytes]:
    files = dict(model.to_files())
    metrics = getattr(model, "metrics", None)
    if metrics is not None:
        files["metrics.json"] = json.dumps(metrics, indent=2, default=str).encode()
    files["kind.json"] = json.dumps({"kind": type(model).__name__}).encode()
    return files


def model_version(model) -> str:
    """Content hash of the model's files: its immutable version."""
    return version_of(file_hashes(model_files(model)))


def file_hashes(files: dict[str, bytes]) -> dict[str, str]:
    """The SHA-256 of each file, by name."""
    return {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}


def version_of(hashes: dict[str, str]) -> str:
    """The version the files with these hashes make: the hash of names and hashes."""
    digest = hashlib.sha256()
    for name, hexdigest in sorted(hashes.items()):
        digest.update(name.encode() + b"\0" + bytes.fromhex(hexdigest))
    return digest.hexdigest()[:12]


def verify_files(asset: str, version: str, files: dict[str, bytes], recorded: dict[str, str] | None) -> None:
    """Raise ModelTampered unless `files` are what version `version` was saved as; names the file that differs.

    `recorded` is the version's HASHES manifest (None for a version saved before manifests):
    it must itself hash to the version, and each file to its entry.
    """
    where = f"{asset} version {version}"
    if recorded is not None and version_of(recorded) != version:
        raise ModelTampered(f"{where}: {HASHES} changed since it was saved: the version is not served")
    if recorded is None:
        if version_of(file_hashes(files)) != version:
            raise ModelTampered(f"{where}: its files changed since it was saved (no {HASHES} to say which): "
                                f"the version is not served")
        return
    actual = file_hashes(files)
    for name in sorted(set(recorded) | set(actual)):
        if name not in actual:
            problem = "is missing"
        elif name not in recorded:
            problem = "was added"
        elif actual[name] != recorded[name]:
            problem = "changed since it was saved"
        else:
            continue
        raise ModelTampered(f"{where}: {name} {problem} (sha256 {actual.get(name, 'none')[:16]}, saved "
                            f"{recorded.get(name, 'none')[:16]}): the version is not served; retrain or "
                            f"`iot-assets models use {asset} <another version>`")


def parse_pins(text: str) -> dict[str, str]:
    pins = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        asset, _, version = item.partition("=")
        if not version:
            raise ValueError(f"model pin {item!r} is not ASSET=VERSION")
        pins[asset.strip()] = version.strip()
    return pins


class PromotionLogError(Exception):
    """A promotion log line that is not a JSON record: names the file and the line."""


class ModelStore:
    def __init__(self, base_url: str):
        self.root = base_path(base_url) / "models"

    def save(self, asset: str, model) -> tuple[str, UPath]:
        """Write the model's files as an immutable version (not served: see `promote`)."""
        files = model_files(model)
        version = model_version(model)
        directory = self.root / asset / version
        for name, data in files.items():
            write_bytes_atomic(directory / name, data)
        write_text_atomic(directory / HASHES, json.dumps(file_hashes(files), indent=2))
        return version, directory

    def use(self, asset: str, version: str) -> None:
        """Point current.json at `version` (no record: `promote` is the recorded way)."""
        if not (self.root / asset / version / "kind.json").exists():
            raise FileNotFoundError(f"{asset} has no version {version} under {self.root / asset}")
        write_text_atomic(self.root / asset / CURRENT, json.dumps({"version": version}))

    def promote(self, asset: str, version: str, reason: str, **details) -> dict | None:
        """Serve `version` from now on and append the promotion record; None (no record) when it is served already."""
        served = self.current_or_none(asset)
        if served == version:
            return None
        self.use(asset, version)
        entry = promotion.record(asset, promotion.PROMOTED, served, version, reason, self.headline(asset, served),
                                 self.headline(asset, version), **details)
        self._append(asset, entry)
        return entry

    def propose(self, asset: str, version: str, reason: str, **details) -> dict | None:
        """Record `version` as proposed to replace the served one, which stays; None if nothing changes."""
        served = self.current_or_none(asset)
        last = promotion.last_event(self.promotions(asset), version)
        if served == version or (last is not None and last["event"] == promotion.PROPOSED
                                 and last["from_version"] == served):
            return None  # served already, or proposed already against the same served version
        entry = promotion.record(asset, promotion.PROPOSED, served, version, reason, self.headline(asset, served),
                                 self.headline(asset, version), **details)
        self._append(asset, entry)
        return entry

    def promotions(self, asset: str) -> list[dict]:
        """The promotion log of `asset`, oldest first (empty before the first record)."""
        path = self.root / asset / PROMOTIONS
        if not path.exists():
            return []
        records = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise PromotionLogError(f"{path} line {number}: not a JSON record ({exc.msg})") from None
        return records

    def pending_proposals(self, asset: str) -> list[dict]:
        """The proposals made against the version served now that nobody has decided on yet, oldest first."""
        served = self.current_or_none(asset)
        pending = {}
        for entry in self.promotions(asset):
            if entry["event"] == promotion.PROPOSED and entry["from_version"] == served:
                pending[entry["to_version"]] = entry
        return [entry for version, entry in pending.items() if version != served]

    def _append(self, asset: str, entry: dict) -> None:
        # Read and rewritten whole: an object store has no append, and the log grows by a line a week.
        path = self.root / asset / PROMOTIONS
        before = path.read_text() if path.exists() else ""
        write_text_atomic(path, before + json.dumps(entry, sort_keys=True, default=str) + "\n")

    def headline(self, asset: str, version: str | None) -> dict | None:
        """The headline figures of a saved version (iot_assets.core.promotion.headline_metrics)."""
        if version is None:
            return None
        directory = self.root / asset / version
        document = directory / ("document.json" if asset == "drift_reference" else "metrics.json")
        try:
            metrics = json.loads(document.read_text()) if document.exists() else {}
        except ValueError:
            metrics = {}
        return promotion.headline_metrics(asset, metrics)

    def current(self, asset: str) -> str:
        pointer = self.root / asset / CURRENT
        if not pointer.exists():
            raise FileNotFoundError(f"{asset} has not been trained yet (no {pointer})")
        return json.loads(pointer.read_text())["version"]

    def current_or_none(self, asset: str) -> str | None:
        """The served version, None before the first training."""
        try:
            return self.current(asset)
        except FileNotFoundError:
            return None

    def versions(self, asset: str) -> list[str]:
        directory = self.root / asset
        return sorted(p.name for p in directory.iterdir() if p.is_dir()) if directory.exists() else []

    def load(self, asset: str, version: str):
        directory = self.root / asset / version
        if not directory.exists():
            raise FileNotFoundError(f"{asset} version {version} not found under {self.root / asset}")
        files = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
        recorded = json.loads(files.pop(HASHES)) if HASHES in files else None
        verify_files(asset, version, files, recorded)
        kind = json.loads(files.pop("kind.json"))["kind"]
        metrics = files.pop("metrics.json", None)
        loaders = _loaders()
        if kind not in loaders:
            raise ValueError(f"{asset} version {version}: unknown model kind {kind!r}")
        model = loaders[kind](files)
        model.metrics = json.loads(metrics) if metrics else None
        model.version = version
        return model


class ModelIOManager(dg.ConfigurableIOManager):
    """Models as versioned directories on the base location; see the module docstring."""

    base_url: str
    pins: str = ""  # ASSET=VERSION,...: serve these versions instead of the current ones
    auto_promote: bool = False  # serve a better challenger or a retrain at once (else: proposed)

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        asset = context.asset_key.to_user_string()
        store = ModelStore(self.base_url)
        version, directory = store.save(asset, obj)
        obj.version = version
        entry = settle(store, asset, version, getattr(obj, "candidate", None), _train_range(obj), self.auto_promote)
        if entry is not None:
            context.log.info(f"{asset} {version}: {entry['event']} ({entry['reason']})")
        context.add_output_metadata({"version": version, "path": dg.MetadataValue.path(str(directory)),
                                     **served_metadata(store, asset, version)})

    def load_input(self, context: dg.InputContext):
        asset = context.asset_key.to_user_string()
        model = served_model(self.base_url, self.pins, asset)
        context.log.info(f"{asset}: version {model.version}")
        return model


def _train_range(model) -> list[str] | None:
    metrics = model if isinstance(model, JsonDocument) else (getattr(model, "metrics", None) or {})
    return metrics.get("train_range")


def settle(store: ModelStore, asset: str, version: str, candidate: promotion.Candidate | None,
           train_range: list[str] | None, auto_promote: bool) -> dict | None:
    """Serve or propose a saved version as iot_assets.core.promotion decides; the record, None if nothing changed."""
    served = store.current_or_none(asset)
    if served is None:
        first = "first training" + (f" on {'..'.join(train_range)}" if train_range else "")
        following = candidate is not None and candidate.kind == promotion.FOLLOWS  # the detector it was built for
        candidate = promotion.Candidate(promotion.FIRST_TRAINING, f"{first}; {candidate.reason}" if following else first,
                                        candidate.details if following else {})
    candidate = candidate or promotion.Candidate(
        promotion.RETRAIN, "retrained" + (f" on the time split {'..'.join(train_range)}" if train_range else "")
        + ", not compared with the served version")
    event = promotion.decide(candidate.kind, served is not None, auto_promote)
    if event == promotion.PROMOTED:
        reason = candidate.reason + (" (automatic promotion is on)" if candidate.kind in (promotion.CHALLENGE,
                                                                                       promotion.RETRAIN) else "")
        return store.promote(asset, version, reason, kind=candidate.kind, **candidate.details)
    return store.propose(asset, version, candidate.reason, kind=candidate.kind, **candidate.details)


def served_metadata(store: ModelStore, asset: str, version: str | None = None) -> dict:
    """The UI's view of a model: the served version, since when and why; and what became of `version`."""
    served = store.current_or_none(asset)
    records = store.promotions(asset)
    since = promotion.served_since(records, served) if served else None
    out = {"served_version": served or "none",
           "served_since": since["at"] if since else "before the promotion log",
           "served_reason": since["reason"] if since else "not recorded (served before the promotion log)"}
    if version is not None and version != served:
        last = promotion.last_event(records, version)
        out["this_version"] = (f"proposed, not served: `iot-assets models use {asset} {version}` serves it"
                               if last and last["event"] == promotion.PROPOSED else "not served")
    elif version is not None:
        out["this_version"] = "served"
    return out


def served_model(base_url: str, pins: str, asset: str):
    """The version of `asset` in use: the pinned one, else the current one (FileNotFoundError if never trained)."""
    store = ModelStore(base_url)
    return store.load(asset, parse_pins(pins).get(asset) or store.current(asset))


class ServedModels(dg.ConfigurableResource):
    """The model versions in use, for a retrain that must beat them (champion and challenger)."""

    base_url: str
    pins: str = ""

    def champion(self, asset: str):
        """The version in use, or None before the first training."""
        try:
            return served_model(self.base_url, self.pins, asset)
        except FileNotFoundError:
            return None
