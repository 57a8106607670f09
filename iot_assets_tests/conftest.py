"""Fixtures every test folder shares; the helpers they use live in iot_assets_tests/support/."""

from pathlib import Path

import pytest

from iot_assets.core.memory import freeze_long_lived
from iot_assets.synthetic import sample
from iot_assets_tests.support.records import FIRST_DAY, REAL_DATA


def pytest_collection_finish(session):
    """What is imported and collected by now lives for the session: left out of every later garbage collection.

    The lake IO manager collects in full before each step reads its inputs (core/memory.py); `iot-assets run`
    freezes its loaded code location so that such a collection stays cheap, and so does the suite. Unfrozen, a
    full collection walks every object of the test session: in a fast-tier worker that never loaded `defs()`,
    37 full collections took 46 s of CPU (load 6.5); frozen, a worker spends 12 to 15 s in them."""
    freeze_long_lived()


@pytest.fixture(autouse=True)
def _pseudonymisation_key_outside_home(tmp_path_factory, monkeypatch):
    """No test writes a key (or an audit log) into the real home: the default key folder is a
    temporary one, for this process and the subprocesses it starts."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
    for name in ("IOT_ASSETS_PSEUDONYMISE_KEY_FILE", "IOT_ASSETS_PSEUDONYMISE_KEY", "IOT_ASSETS_REVEAL_AUDIT_LOG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """Two days of sample archives for four devices (two of them one OEM's cameras)."""
    out = tmp_path_factory.mktemp("sample")
    sample.generate(out, FIRST_DAY, 2, scale=0.05, seed=7,
                    devices=["nature_remo", "xiaomi_mijia_led", "jvc_kenwood_hdtv_ip_camera", "planex_smacam_pantilt"])
    return out


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "nature_remo.tar.gz").exists():
        pytest.skip("the real KDDI-IoT-2019 archives are not on this machine")
    return REAL_DATA
