"""Faults that used to pass silently (issue 23): each test failed before its fix.

Double counting across archives, archives rejected wholesale, the up-front check of the data
folder, archive names that would escape `staging/`, model versions edited after they were
saved, stale reports and work folders, duplicated lines inside an archive.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from iot_assets.cli import main
from iot_assets.core.archive import find_archives, group_archives
from iot_assets.io.models import JsonDocument, ModelStore, ModelTampered
from iot_assets.io.staging import ArchiveStore
from iot_assets_tests.conftest import flow_line, json_archive, trailer


# ---------------------------------------------------------------- names that would escape staging/


@pytest.mark.parametrize("name", ["...tar.gz", "..tar.gz", ".work.tar.gz", "...tar.gz00"])
def test_an_archive_name_that_would_escape_staging_is_rejected_naming_the_file(tmp_path, name):
    raw = tmp_path / "raw"
    json_archive(raw / name, flow_line() + trailer(1), member="x.json")
    json_archive(raw / "nature_remo.tar.gz", flow_line() + trailer(1))
    archives, errors = find_archives(raw)
    assert [a.name for a in archives] == ["nature_remo"]
    (error,) = errors
    assert name in str(error) and "not a plain device name" in str(error)


def test_staging_keys_stay_inside_staging(tmp_path):
    store = ArchiveStore(base_url=str(tmp_path), first_day="2019-06-25", last_day="2019-06-26")
    (archive,), _ = group_archives([json_archive(tmp_path / "raw" / "nature_remo.tar.gz", flow_line() + trailer(1))])
    key = store.staged_key(archive, "ab" * 32)
    assert (store.staging / key).resolve().is_relative_to(store.staging.resolve())
    forged = type(archive)("..", archive.parts)
    with pytest.raises(ValueError, match="'..' is not a plain device name"):
        store.staged_key(forged, "ab" * 32)


def test_decode_of_a_file_named_dot_dot_is_a_clear_error_not_a_traceback(tmp_path):
    path = json_archive(tmp_path / "in" / "...tar.gz", flow_line() + trailer(1), member="x.json")
    result = CliRunner().invoke(main, ["decode", str(path), "--out", str(tmp_path / "out" / "deep")])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "error: ...tar.gz" in result.output and "not a plain device name" in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------- model versions verified on load


def test_a_model_file_edited_after_saving_is_refused_naming_the_file(tmp_path):
    store = ModelStore(str(tmp_path))
    version, directory = store.save("drift_reference", JsonDocument({"mean": [1.0, 2.0]}))
    assert store.load("drift_reference", version) == {"mean": [1.0, 2.0]}
    (Path(directory.path) / "document.json").write_text(json.dumps({"mean": [9.0, 2.0]}))
    with pytest.raises(ModelTampered, match=r"document\.json") as caught:
        store.load("drift_reference", version)
    assert version in str(caught.value) and "changed since it was saved" in str(caught.value)


def test_a_model_file_added_or_removed_is_refused(tmp_path):
    store = ModelStore(str(tmp_path))
    version, directory = store.save("drift_reference", JsonDocument({"mean": [1.0]}))
    (Path(directory.path) / "extra.npz").write_bytes(b"x")
    with pytest.raises(ModelTampered, match=r"extra\.npz"):
        store.load("drift_reference", version)
    (Path(directory.path) / "extra.npz").unlink()
    (Path(directory.path) / "document.json").unlink()
    with pytest.raises(ModelTampered, match=r"document\.json"):
        store.load("drift_reference", version)
