"""Small feed files in the published formats (NVD CVE API 2.0 JSON + .meta, CISA KEV JSON, FIRST EPSS csv.gz).

Every CVE here is FICTIONAL (CVE-2099-...), and so are the vendor and products
(`example_vendor`): test records, not facts.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

HUB_CPE = "cpe:2.3:o:example_vendor:lamp_hub_firmware:*:*:*:*:*:*:*:*"
HUB_HARDWARE_CPE = "cpe:2.3:h:example_vendor:lamp_hub:-:*:*:*:*:*:*:*"
NEIGHBOUR_CPE = "cpe:2.3:o:example_vendor:lamp_hub_pro_firmware:*:*:*:*:*:*:*:*"


def cpe_match(criteria: str, vulnerable: bool = True, **bounds: str) -> dict:
    return {"vulnerable": vulnerable, "criteria": criteria, "matchCriteriaId": "00000000-0000-0000-0000-000000000000",
            **bounds}


def nvd_record(cve_id: str, text: str, vector: str | None = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H",
               matches: list[dict] | None = None, published: str = "2019-05-01T10:15:00.000",
               last_modified: str = "2019-05-02T10:15:00.000", references: list[dict] | None = None) -> dict:
    """One `vulnerabilities[]` item of an NVD CVE API 2.0 feed; the description says it is fictional."""
    metrics = {}
    if vector:
        metrics["cvssMetricV31"] = [{"source": "nvd@nist.gov", "type": "Primary",
                                     "cvssData": {"version": "3.1", "vectorString": vector}}]
    return {"cve": {
        "id": cve_id, "sourceIdentifier": "cve@example.org", "published": published, "lastModified": last_modified,
        "vulnStatus": "Analyzed",
        "descriptions": [{"lang": "en", "value": f"FICTIONAL test record. {text}"}],
        "metrics": metrics,
        "configurations": [{"nodes": [{"operator": "OR", "negate": False, "cpeMatch": matches or []}]}],
        "references": references or [{"url": "https://example.org/advisory", "source": "cve@example.org",
                                      "tags": ["Vendor Advisory"]}],
    }}


def write_nvd(folder: Path, name: str, records: list[dict], last_modified: str = "2019-06-30T03:00:00-04:00") -> Path:
    """`nvdcve-2.0-NAME.json.gz` and its `.meta` (sha256 and size of the uncompressed JSON, as NVD writes them)."""
    document = {"resultsPerPage": len(records), "startIndex": 0, "totalResults": len(records), "format": "NVD_CVE",
                "version": "2.0", "timestamp": "2019-06-30T07:00:00.000", "vulnerabilities": records}
    content = json.dumps(document).encode()
    path = folder / f"nvdcve-2.0-{name}.json.gz"
    path.write_bytes(gzip.compress(content))
    meta = (f"lastModifiedDate:{last_modified}\r\nsize:{len(content)}\r\ngzSize:{path.stat().st_size}\r\n"
            f"sha256:{hashlib.sha256(content).hexdigest().upper()}\r\n")
    (folder / f"nvdcve-2.0-{name}.meta").write_text(meta)
    return path


def kev_entry(cve_id: str, due: str = "2019-07-15", action: str = "Apply updates per vendor instructions.") -> dict:
    return {"cveID": cve_id, "vendorProject": "Example Vendor", "product": "Lamp Hub",
            "vulnerabilityName": "FICTIONAL test record", "dateAdded": "2019-06-01",
            "shortDescription": "FICTIONAL test record.", "requiredAction": action, "dueDate": due,
            "knownRansomwareCampaignUse": "Unknown", "notes": "", "cwes": []}


def write_kev(folder: Path, entries: list[dict], released: str = "2019-06-29T15:00:00.0000Z",
              count: int | None = None) -> Path:
    document = {"title": "CISA Catalog of Known Exploited Vulnerabilities", "catalogVersion": "2019.06.29",
                "dateReleased": released, "count": len(entries) if count is None else count,
                "vulnerabilities": entries}
    path = folder / "known_exploited_vulnerabilities.json"
    path.write_text(json.dumps(document))
    return path


def write_epss(folder: Path, day: str, rows: list[tuple[str, float, float]], first_line: str | None = None) -> Path:
    lines = [first_line if first_line is not None else f"#model_version:v2023.03.01,score_date:{day}T00:00:00+0000",
             "cve,epss,percentile", *(f"{c},{e},{p}" for c, e, p in rows)]
    path = folder / f"epss_scores-{day}.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return path
