"""benchmarks/soak_daemon.py, short: the daemon builds the days that land while it and its run workers are
killed, a re-export lands and the UI's backfill of the history days runs beside it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_short_daemon_soak_with_kills_a_reexport_and_a_ui_backfill_loses_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak_daemon.py"), "--days", "1", "--history", "2",
                           "--devices", "2", "--day-seconds", "40", "--kills-per-day", "2", "--reexport-chance", "1",
                           "--backfill-on-day", "0", "--drain-minutes", "10", "--seed", "1", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    assert "records lost: 0;" in done.stdout
    result = json.loads(done.stdout[done.stdout.index("\n{\n"):])
    assert result["days_missing"] == [] and result["days_not_rebuilt_after_landing"] == []
    assert result["duplicate_flows"] == 0 and result["reexport_rows_clean"] == 0
    assert result["reexport_rows_rejected_as_copies"] > 0
    assert result["runs_overlapping"] == [] and result["backfill"] in ("COMPLETED", "COMPLETED_SUCCESS")
