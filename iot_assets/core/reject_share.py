"""An archive that rejects most of its records is a changed format, not a run of bad records.

Rejects are normally a few odd records among millions; when a share past
IOT_ASSETS_MAX_REJECT_SHARE (or every record) is rejected, the export itself changed (an
IPv6-only capture, renamed or re-nested fields, epoch timestamps), and landing the rest would make
the device vanish quietly. Such an archive fails, with a one-line reason that names the likely cause
and its first rejected line. Records outside the configured days are not the archive's fault and
are not counted.
"""

from __future__ import annotations

import pyarrow.parquet as pq

from iot_assets.core.ingest import ArchiveSummary

NOT_THE_ARCHIVES_FAULT = ("outside_date_range",)

# What a reason says about the export, by the reason's prefix; the first that matches.
LIKELY_CAUSES = (
    ("missing_field:", "a changed format (a field renamed, removed or re-nested)?"),
    ("wrong_type:flowStartMilliseconds", "a changed time format (epoch numbers, another layout)?"),
    ("wrong_type:flowEndMilliseconds", "a changed time format (epoch numbers, another layout)?"),
    ("wrong_type:", "a changed format (fields of another JSON type)?"),
    ("bad_timestamp:", "a changed time format (epoch numbers, another layout)?"),
    ("bad_ip:", "a changed address format (IPv6-only, or other address fields)?"),
    ("bad_mac:", "a changed MAC address format?"),
    ("invalid_json", "not JSON lines (another export format, or the wrong file)?"),
    ("unknown_record", "a changed record layout (records not under `flows`)?"),
    ("empty_line", "an empty or blanked export?"),
    ("line_too_long", "not line-delimited JSON (one huge line)?"),
)


def likely_cause(reason: str) -> str:
    """What a reject reason shared by most records suggests about the export."""
    return next((cause for prefix, cause in LIKELY_CAUSES if reason.startswith(prefix)), "a changed format?")


def first_reject(rejects_file, skip=NOT_THE_ARCHIVES_FAULT) -> dict | None:
    """The first rejected line of an archive's rejects.parquet (a path or an open file) whose reason is not in `skip`."""
    with pq.ParquetFile(rejects_file) as rejects:
        for batch in rejects.iter_batches(batch_size=4096, columns=["line_number", "reason", "detail"]):
            for row in batch.to_pylist():
                if row["reason"] not in skip:
                    return row
    return None


def reject_share_problem(summary: ArchiveSummary, max_share: float, first: dict | None) -> str | None:
    """Why `summary`'s archive fails for its rejects (every record, or more than `max_share` of them), else None.

    `first` is its first rejected line (`first_reject`), named in the reason.
    """
    excused = sum(n for reason, n in summary.rejects_by_reason.items() if reason in NOT_THE_ARCHIVES_FAULT)
    considered = summary.decoded + summary.rejected - excused
    rejected = summary.rejected - excused
    if considered <= 0 or rejected <= 0:
        return None
    share = rejected / considered
    if rejected == considered:
        head = f"all {considered:,} flow lines rejected"
    elif share > max_share:
        head = (f"{rejected:,} of {considered:,} flow lines rejected "
                f"({share:.0%} > IOT_ASSETS_MAX_REJECT_SHARE {max_share:g})")
    else:
        return None
    if first is None:  # the counts without the rejects file
        reason = max((r for r in summary.rejects_by_reason if r not in NOT_THE_ARCHIVES_FAULT),
                     key=summary.rejects_by_reason.get)
        return f"{head}, most as {reason}: {likely_cause(reason)}"
    detail = f", {first['detail']!r}" if first.get("detail") else ""
    return (f"{head}, first reason {first['reason']} (line {first['line_number']:,}{detail}): "
            f"{likely_cause(first['reason'])}")
