"""Importers of the public vulnerability feeds an operator drops in a folder (no Internet needed).

- NVD CVE API 2.0 JSON feeds, `nvdcve-2.0-*.json.gz` (the yearly, `modified` and `recent`
  files), each beside its `.meta` file (`lastModifiedDate:`, `size:`, `gzSize:`, `sha256:`
  lines; `sha256` and `size` are of the uncompressed JSON). A file whose hash or size differs
  from its meta, or that has no meta, is refused (FeedError naming the file and both hashes).
- CISA Known Exploited Vulnerabilities, `known_exploited_vulnerabilities.json`.
- FIRST EPSS scores, `epss_scores-YYYY-MM-DD.csv.gz` (`#model_version:...,score_date:...`
  first line, then `cve,epss,percentile`).

Every import returns a FeedImport: the table(s), a FeedVersion (the sha256 of the content
imported and the feed's own date) and `problems`, one line per record left out (naming the
file and the record); a record is never dropped without one.

Keeping the previous good feed: a bad file (hash mismatch, missing meta, unreadable or
truncated JSON/CSV) raises FeedError and nothing of that import is returned. In an asset, let
the error fail the materialization: the last good materialization stays the one downstream
assets read, and the run's error names the file. Where several dated files of one feed lie
in the folder (EPSS, one file a day), `import_newest_good` tries them newest first and
returns the first good one with the FeedErrors of the newer, refused ones (to log or warn).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import orjson
import pandas as pd
from cpe.cpe2_3_fs import CPE2_3_FS
from cvss import CVSS2, CVSS3, CVSS4
from cvss.exceptions import CVSSError

CVE_PATTERN = re.compile(r"^CVE-\d{4}-\d{4,}$")
NVD_GLOB = "nvdcve-2.0-*.json.gz"
KEV_FILE = "known_exploited_vulnerabilities.json"
EPSS_GLOB = "epss_scores-*.csv.gz"
_EPSS_NAME = re.compile(r"^epss_scores-(\d{4}-\d{2}-\d{2})\.csv\.gz$")

CVE_COLUMNS = ["cve", "published", "last_modified", "vuln_status", "description", "cvss_version", "cvss_base_score",
               "cvss_severity", "cvss_vector", "cvss_attack_vector", "advisory_url", "source_file"]
CPE_MATCH_COLUMNS = ["cve", "criteria", "part", "vendor", "product", "cpe_version", "vulnerable",
                     "versionStartIncluding", "versionStartExcluding", "versionEndIncluding", "versionEndExcluding"]
KEV_COLUMNS = ["cve", "vendor_project", "product", "vulnerability_name", "date_added", "short_description",
               "required_action", "due_date", "known_ransomware_campaign_use"]
EPSS_COLUMNS = ["cve", "epss", "percentile"]

# NVD metric keys, in the order a finding's CVSS is taken from: CVSS 3.x is what NVD scores
# every CVE with since 2016; 4.0 and 2.0 only where no 3.x score exists.
_CVSS_KEYS = (("cvssMetricV31", "3.1", CVSS3), ("cvssMetricV30", "3.0", CVSS3), ("cvssMetricV40", "4.0", CVSS4),
              ("cvssMetricV2", "2.0", CVSS2))
# Reference tags that point at the vendor's own fix or advice, best first.
_ADVICE_TAGS = ("Vendor Advisory", "Patch", "Release Notes", "Mitigation")


class FeedError(Exception):
    """A feed file that cannot be used as a whole; the message names the file."""


@dataclass(frozen=True)
class FeedVersion:
    feed: str  # "nvd", "kev" or "epss"
    sha256: str  # of the content imported (for NVD: of the files' names and hashes, sorted)
    feed_date: str  # YYYY-MM-DD: the feed's own date (NVD lastModifiedDate, KEV dateReleased, EPSS score_date)
    files: tuple[str, ...]
    records: int


@dataclass
class FeedImport:
    version: FeedVersion
    tables: dict[str, pd.DataFrame]
    problems: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # messages of newer files refused (import_newest_good)


# ---------------------------------------------------------------- NVD


def read_nvd_meta(path: Path) -> dict[str, str]:
    """The key:value lines of an NVD `.meta` file (the value of lastModifiedDate holds colons)."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise FeedError(f"{path}: cannot read the NVD meta file ({exc})") from exc
    meta = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            meta[key.strip()] = value.strip()
    if "sha256" not in meta:
        raise FeedError(f"{path}: NVD meta file has no sha256 line")
    return meta


def _meta_path(feed: Path) -> Path:
    return feed.with_name(feed.name.removesuffix(".json.gz") + ".meta")


def _gunzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise FeedError(f"{path}: not a readable gzip file ({exc})") from exc


def verified_nvd_json(path: Path) -> tuple[bytes, dict[str, str]]:
    """(uncompressed JSON, meta) of one NVD feed file, after checking sha256 and size against its meta."""
    meta_path = _meta_path(path)
    if not meta_path.exists():
        raise FeedError(f"{path}: no meta file {meta_path.name} beside it, so its sha256 cannot be checked")
    meta = read_nvd_meta(meta_path)
    content = _gunzip(path)
    actual = hashlib.sha256(content).hexdigest()
    if actual.lower() != meta["sha256"].lower():
        raise FeedError(f"{path}: sha256 of the uncompressed JSON is {actual}, its meta says {meta['sha256'].lower()}")
    if "size" in meta and meta["size"].isdigit() and int(meta["size"]) != len(content):
        raise FeedError(f"{path}: uncompressed size is {len(content)} bytes, its meta says {meta['size']}")
    return content, meta


def _cvss(metrics: dict) -> dict:
    """The CVE's score from the first CVSS version present (NVD's own entry preferred), parsed by `cvss`."""
    for key, version, parser in _CVSS_KEYS:
        entries = metrics.get(key) or []
        if not entries:
            continue
        entry = next((e for e in entries if e.get("type") == "Primary"), entries[0])
        vector = entry["cvssData"]["vectorString"]
        parsed = parser(vector)
        severity = parsed.severity if version == "4.0" else parsed.severities()[0]
        return {"cvss_version": version, "cvss_base_score": float(parsed.base_score), "cvss_severity": severity,
                "cvss_vector": vector, "cvss_attack_vector": parsed.metrics.get("AV")}
    return {"cvss_version": None, "cvss_base_score": None, "cvss_severity": None, "cvss_vector": None,
            "cvss_attack_vector": None}


def _advisory_url(references: list[dict]) -> str | None:
    for tag in _ADVICE_TAGS:
        for reference in references:
            if tag in (reference.get("tags") or []):
                return reference["url"]
    return references[0]["url"] if references else None


def _cpe_fields(criteria: str, parsed: dict[str, tuple[str, str, str, str]]) -> tuple[str, str, str, str]:
    """(part, vendor, product, version) of a CPE 2.3 name, parsed by `cpe` once per distinct name of an import."""
    if criteria not in parsed:
        name = CPE2_3_FS(criteria)
        parsed[criteria] = (name.get_part()[0], name.get_vendor()[0], name.get_product()[0], name.get_version()[0])
    return parsed[criteria]


def _cpe_matches(cve_id: str, configurations: list[dict], parsed: dict) -> list[dict]:
    rows = []
    for configuration in configurations:
        for node in configuration.get("nodes", []):
            for match in node.get("cpeMatch", []):
                part, vendor, product, version = _cpe_fields(match["criteria"], parsed)
                rows.append({
                    "cve": cve_id, "criteria": match["criteria"], "part": part, "vendor": vendor,
                    "product": product, "cpe_version": version, "vulnerable": bool(match["vulnerable"]),
                    **{k: match.get(k) for k in CPE_MATCH_COLUMNS[7:]},
                })
    return rows


def parse_nvd_json(content: bytes, source: str,
                   parsed_cpes: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(CVE table, CPE-match table, problems) of one NVD CVE API 2.0 JSON document.

    `parsed_cpes` caches CPE names across the files of one import (`cpe`'s formatted-string parser takes
    about 70 µs a name, and NVD repeats names across CVEs).
    """
    parsed_cpes = {} if parsed_cpes is None else parsed_cpes
    try:
        document = orjson.loads(content)
        vulnerabilities = document["vulnerabilities"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise FeedError(f"{source}: not an NVD CVE API 2.0 JSON feed ({exc!r})") from exc
    cves, matches, problems = [], [], []
    for index, item in enumerate(vulnerabilities):
        cve = item.get("cve") if isinstance(item, dict) else None
        cve_id = cve.get("id") if isinstance(cve, dict) else None
        if not isinstance(cve_id, str) or not CVE_PATTERN.match(cve_id):
            problems.append(f"{source} vulnerabilities[{index}]: no valid CVE id ({cve_id!r})")
            continue
        try:
            description = next((d["value"] for d in cve.get("descriptions", []) if d.get("lang") == "en"), "")
            row = {"cve": cve_id, "published": cve["published"][:10], "last_modified": cve["lastModified"],
                   "vuln_status": cve.get("vulnStatus"), "description": description,
                   **_cvss(cve.get("metrics") or {}), "advisory_url": _advisory_url(cve.get("references") or []),
                   "source_file": source}
            cve_matches = _cpe_matches(cve_id, cve.get("configurations") or [], parsed_cpes)
        except (KeyError, TypeError, IndexError, ValueError, NotImplementedError, CVSSError) as exc:
            problems.append(f"{source} {cve_id}: left out ({type(exc).__name__}: {exc})")
            continue
        cves.append(row)
        matches.extend(cve_matches)
    return (pd.DataFrame(cves, columns=CVE_COLUMNS), pd.DataFrame(matches, columns=CPE_MATCH_COLUMNS), problems)


def import_nvd(folder: Path | str) -> FeedImport:
    """Every `nvdcve-2.0-*.json.gz` in `folder`, each verified against its meta; tables `cves` and `cpe_matches`.

    A CVE in several files (a yearly file and `modified`) is taken from the one with the
    latest lastModified. Any bad file refuses the whole import (FeedError).
    """
    paths = sorted(Path(folder).glob(NVD_GLOB))
    if not paths:
        raise FeedError(f"{folder}: no NVD feed file ({NVD_GLOB})")
    cve_parts, match_parts, problems, hashes, dates, parsed_cpes = [], [], [], [], [], {}
    for path in paths:
        content, meta = verified_nvd_json(path)
        cves, matches, file_problems = parse_nvd_json(content, path.name, parsed_cpes)
        cve_parts.append(cves)
        match_parts.append(matches.assign(source_file=path.name))
        problems += file_problems
        hashes.append(f"{path.name}:{meta['sha256'].lower()}")
        dates.append(meta.get("lastModifiedDate", "")[:10])
    # The full lastModified timestamp orders versions of a CVE; the table keeps its date.
    cves = pd.concat(cve_parts, ignore_index=True).sort_values(["cve", "last_modified", "source_file"])
    latest = cves.drop_duplicates("cve", keep="last").assign(last_modified=lambda t: t["last_modified"].str[:10])
    keep = pd.MultiIndex.from_frame(latest[["cve", "source_file"]])
    matches = pd.concat(match_parts, ignore_index=True)
    matches = matches[pd.MultiIndex.from_frame(matches[["cve", "source_file"]]).isin(keep)]
    version = FeedVersion("nvd", hashlib.sha256("\n".join(hashes).encode()).hexdigest(), max(dates),
                          tuple(p.name for p in paths), len(latest))
    return FeedImport(version, {"cves": latest.reset_index(drop=True),
                                "cpe_matches": matches[CPE_MATCH_COLUMNS].reset_index(drop=True)}, problems)


# ---------------------------------------------------------------- CISA KEV


def import_kev(path: Path | str) -> FeedImport:
    """CISA's Known Exploited Vulnerabilities catalogue (JSON); table `kev`, one row per CVE."""
    path = Path(path)
    try:
        content = path.read_bytes()
        document = orjson.loads(content)
        records, released = document["vulnerabilities"], document["dateReleased"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise FeedError(f"{path}: not a readable CISA KEV catalogue ({exc!r})") from exc
    if isinstance(document.get("count"), int) and document["count"] != len(records):
        raise FeedError(f"{path}: says count {document['count']} but holds {len(records)} vulnerabilities (truncated?)")
    rows, problems = [], []
    for index, record in enumerate(records):
        cve_id = record.get("cveID") if isinstance(record, dict) else None
        if not isinstance(cve_id, str) or not CVE_PATTERN.match(cve_id):
            problems.append(f"{path.name} vulnerabilities[{index}]: no valid cveID ({cve_id!r})")
            continue
        try:
            date_added = pd.Timestamp(record["dateAdded"]).strftime("%Y-%m-%d")
            due_date = pd.Timestamp(record["dueDate"]).strftime("%Y-%m-%d") if record.get("dueDate") else None
        except (KeyError, ValueError) as exc:
            problems.append(f"{path.name} {cve_id}: left out, bad or missing date ({exc})")
            continue
        rows.append({"cve": cve_id, "vendor_project": record.get("vendorProject"), "product": record.get("product"),
                     "vulnerability_name": record.get("vulnerabilityName"), "date_added": date_added,
                     "short_description": record.get("shortDescription"),
                     "required_action": record.get("requiredAction"), "due_date": due_date,
                     "known_ransomware_campaign_use": record.get("knownRansomwareCampaignUse")})
    table = pd.DataFrame(rows, columns=KEV_COLUMNS).drop_duplicates("cve", keep="last").reset_index(drop=True)
    version = FeedVersion("kev", hashlib.sha256(content).hexdigest(), str(released)[:10], (path.name,), len(table))
    return FeedImport(version, {"kev": table}, problems)


# ---------------------------------------------------------------- FIRST EPSS


def import_epss(path: Path | str) -> FeedImport:
    """One FIRST EPSS daily file (`epss_scores-YYYY-MM-DD.csv.gz`); table `epss` (cve, epss, percentile)."""
    path = Path(path)
    content = _gunzip(path)
    text = content.decode("utf-8", errors="replace")
    first, _, body = text.partition("\n")
    header = dict(part.split(":", 1) for part in first.lstrip("#").strip().split(",") if ":" in part)
    if not first.startswith("#") or "score_date" not in header:
        raise FeedError(f"{path}: first line is not EPSS's '#model_version:...,score_date:...' ({first[:80]!r})")
    try:
        table = pd.read_csv(io.StringIO(body), dtype={"cve": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise FeedError(f"{path}: not an EPSS score table ({exc})") from exc
    if list(table.columns) != EPSS_COLUMNS:
        raise FeedError(f"{path}: columns are {list(table.columns)}, expected {EPSS_COLUMNS}")
    table["epss"] = pd.to_numeric(table["epss"], errors="coerce")
    table["percentile"] = pd.to_numeric(table["percentile"], errors="coerce")
    bad = (~table["cve"].fillna("").str.match(CVE_PATTERN.pattern) | ~table["epss"].between(0, 1)
           | ~table["percentile"].between(0, 1))
    problems = [f"{path.name} line {i + 3}: left out ({r.cve!r}, epss {r.epss!r}, percentile {r.percentile!r})"
                for i, r in zip(table.index[bad], table[bad].itertuples())]
    table = table[~bad].drop_duplicates("cve", keep="last").reset_index(drop=True)
    score_date = header["score_date"].strip()[:10]
    version = FeedVersion("epss", hashlib.sha256(content).hexdigest(), score_date, (path.name,), len(table))
    return FeedImport(version, {"epss": table}, problems)


def epss_files(folder: Path | str) -> list[Path]:
    """The EPSS files in `folder`, newest (by the date in the name) first."""
    dated = [(m.group(1), p) for p in Path(folder).glob(EPSS_GLOB) if (m := _EPSS_NAME.match(p.name))]
    return [p for _, p in sorted(dated, reverse=True)]


def import_newest_good(paths: list[Path], importer: Callable[[Path], FeedImport]) -> FeedImport:
    """The import of the first of `paths` (newest first) that is good, with the newer refused files' errors.

    Raises FeedError when none is good.
    """
    refused = []
    for path in paths:
        try:
            result = importer(path)
        except FeedError as exc:
            refused.append(str(exc))
            continue
        result.refused = refused
        return result
    raise FeedError("no good feed file: " + ("; ".join(refused) if refused else "none found"))


# ---------------------------------------------------------------- freshness


def feed_ages(versions: list[FeedVersion], day: str) -> pd.DataFrame:
    """Per feed: its own date and its age in days on `day` (for a 'feed older than N days' check)."""
    rows = [{"feed": v.feed, "feed_date": v.feed_date, "sha256": v.sha256,
             "age_days": (pd.Timestamp(day) - pd.Timestamp(v.feed_date)).days} for v in versions]
    return pd.DataFrame(rows, columns=["feed", "feed_date", "sha256", "age_days"])


def stale_feeds(versions: list[FeedVersion], day: str, max_age_days: int) -> pd.DataFrame:
    """The feeds older than `max_age_days` on `day`."""
    ages = feed_ages(versions, day)
    return ages[ages["age_days"] > max_age_days].reset_index(drop=True)
