"""Feed importers on small files in the published formats; every CVE is FICTIONAL (CVE-2099-...)."""

import gzip
import hashlib

import pandas as pd
import pytest

from iot_assets.contracts.catalogue import DEVICES
from iot_assets.core import feeds
from iot_assets.core.device_cpes import DeviceCpeError, read_device_cpes
from iot_assets_tests.support.feed_files import (
    HUB_CPE,
    HUB_HARDWARE_CPE,
    cpe_match,
    kev_entry,
    nvd_record,
    write_epss,
    write_kev,
    write_nvd,
)


def _hub_record(cve_id="CVE-2099-0001", **kwargs):
    return nvd_record(cve_id, "A SYN flood on port tcp/80 freezes the lamp hub.",
                      matches=[cpe_match(HUB_CPE, versionEndExcluding="2.4.0"), cpe_match(HUB_HARDWARE_CPE, False)],
                      **kwargs)


def test_nvd_feed_is_parsed_into_cve_and_cpe_match_tables(tmp_path):
    write_nvd(tmp_path, "2099", [_hub_record(), nvd_record("CVE-2099-0002", "Unscored.", vector=None)])
    result = feeds.import_nvd(tmp_path)
    cves = result.tables["cves"].set_index("cve")
    assert list(cves.index) == ["CVE-2099-0001", "CVE-2099-0002"]
    first = cves.loc["CVE-2099-0001"]
    assert (first["cvss_base_score"], first["cvss_severity"], first["cvss_version"]) == (7.5, "High", "3.1")
    assert first["cvss_attack_vector"] == "N"
    assert first["published"] == "2019-05-01" and first["advisory_url"] == "https://example.org/advisory"
    assert first["description"].startswith("FICTIONAL test record.")
    assert pd.isna(cves.loc["CVE-2099-0002", "cvss_base_score"]) and cves.loc["CVE-2099-0002", "cvss_severity"] is None
    matches = result.tables["cpe_matches"]
    assert matches[["part", "vendor", "product", "vulnerable", "versionEndExcluding"]].to_dict("records") == [
        {"part": "o", "vendor": "example_vendor", "product": "lamp_hub_firmware", "vulnerable": True,
         "versionEndExcluding": "2.4.0"},
        {"part": "h", "vendor": "example_vendor", "product": "lamp_hub", "vulnerable": False,
         "versionEndExcluding": None}]
    assert result.version.feed == "nvd" and result.version.feed_date == "2019-06-30"
    assert result.version.records == 2 and result.version.files == ("nvdcve-2.0-2099.json.gz",)
    assert result.problems == []


def test_tampered_nvd_feed_is_refused_naming_the_file_and_both_hashes(tmp_path):
    path = write_nvd(tmp_path, "2099", [_hub_record()])
    expected = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
    tampered = gzip.decompress(path.read_bytes()).replace(b"freezes", b"reboots")
    path.write_bytes(gzip.compress(tampered))
    with pytest.raises(feeds.FeedError) as error:
        feeds.import_nvd(tmp_path)
    message = str(error.value)
    assert "nvdcve-2.0-2099.json.gz" in message
    assert expected in message and hashlib.sha256(tampered).hexdigest() in message


def test_nvd_feed_without_meta_is_refused(tmp_path):
    write_nvd(tmp_path, "2099", [_hub_record()])
    (tmp_path / "nvdcve-2.0-2099.meta").unlink()
    with pytest.raises(feeds.FeedError, match=r"nvdcve-2\.0-2099\.json\.gz: no meta file nvdcve-2\.0-2099\.meta"):
        feeds.import_nvd(tmp_path)


def test_nvd_keeps_the_latest_version_of_a_cve_across_files(tmp_path):
    write_nvd(tmp_path, "2099", [_hub_record()])
    newer = nvd_record("CVE-2099-0001", "Now also on the pro hub.", last_modified="2019-06-20T00:00:00.000",
                       matches=[cpe_match(HUB_CPE, versionEndExcluding="2.5.0")])
    write_nvd(tmp_path, "modified", [newer])
    result = feeds.import_nvd(tmp_path)
    cves, matches = result.tables["cves"], result.tables["cpe_matches"]
    assert len(cves) == 1 and cves.loc[0, "last_modified"] == "2019-06-20"
    assert matches["versionEndExcluding"].tolist() == ["2.5.0"]
    assert result.version.files == ("nvdcve-2.0-2099.json.gz", "nvdcve-2.0-modified.json.gz")


def test_nvd_record_with_a_malformed_vector_is_left_out_and_named(tmp_path):
    write_nvd(tmp_path, "2099", [_hub_record(), nvd_record("CVE-2099-0003", "Bad vector.", vector="CVSS:3.1/AV:Q")])
    result = feeds.import_nvd(tmp_path)
    assert result.tables["cves"]["cve"].tolist() == ["CVE-2099-0001"]
    assert len(result.problems) == 1
    assert result.problems[0].startswith("nvdcve-2.0-2099.json.gz CVE-2099-0003: left out (CVSS3MalformedError")


def test_kev_catalogue_is_read(tmp_path):
    write_kev(tmp_path, [kev_entry("CVE-2099-0001", due="2019-07-15"), {"cveID": "not-a-cve"}])
    result = feeds.import_kev(tmp_path / feeds.KEV_FILE)
    kev = result.tables["kev"]
    assert kev[["cve", "due_date", "required_action"]].to_dict("records") == [
        {"cve": "CVE-2099-0001", "due_date": "2019-07-15", "required_action": "Apply updates per vendor instructions."}]
    assert result.version.feed_date == "2019-06-29"
    assert result.problems == ["known_exploited_vulnerabilities.json vulnerabilities[1]: no valid cveID ('not-a-cve')"]


def test_truncated_kev_catalogue_is_refused(tmp_path):
    write_kev(tmp_path, [kev_entry("CVE-2099-0001")], count=1200)
    with pytest.raises(feeds.FeedError, match="known_exploited_vulnerabilities.json: says count 1200 but holds 1"):
        feeds.import_kev(tmp_path / feeds.KEV_FILE)


def test_epss_scores_are_read_with_their_score_date(tmp_path):
    path = write_epss(tmp_path, "2019-06-29", [("CVE-2099-0001", 0.42, 0.97), ("CVE-2099-0002", 1.7, 0.5)])
    result = feeds.import_epss(path)
    assert result.tables["epss"].to_dict("records") == [{"cve": "CVE-2099-0001", "epss": 0.42, "percentile": 0.97}]
    assert result.version.feed_date == "2019-06-29"
    assert result.version.sha256 == hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
    assert len(result.problems) == 1 and "line 4" in result.problems[0] and "CVE-2099-0002" in result.problems[0]


def test_epss_without_its_header_line_is_refused(tmp_path):
    path = write_epss(tmp_path, "2019-06-29", [("CVE-2099-0001", 0.4, 0.9)], first_line="cve,epss,percentile")
    with pytest.raises(feeds.FeedError, match="epss_scores-2019-06-29.csv.gz: first line is not EPSS's"):
        feeds.import_epss(path)


def test_a_bad_newest_file_leaves_the_previous_good_one_in_use(tmp_path):
    write_epss(tmp_path, "2019-06-28", [("CVE-2099-0001", 0.1, 0.5)])
    (tmp_path / "epss_scores-2019-06-29.csv.gz").write_bytes(b"\x1f\x8b truncated download")
    result = feeds.import_newest_good(feeds.epss_files(tmp_path), feeds.import_epss)
    assert result.version.feed_date == "2019-06-28"
    assert len(result.refused) == 1 and "epss_scores-2019-06-29.csv.gz" in result.refused[0]
    (tmp_path / "epss_scores-2019-06-28.csv.gz").unlink()
    with pytest.raises(feeds.FeedError, match="no good feed file"):
        feeds.import_newest_good(feeds.epss_files(tmp_path), feeds.import_epss)


def test_feed_ages_and_stale_feeds():
    versions = [feeds.FeedVersion("nvd", "a" * 64, "2019-06-30", ("x",), 1),
                feeds.FeedVersion("epss", "b" * 64, "2019-06-20", ("y",), 1)]
    ages = feeds.feed_ages(versions, "2019-07-01")
    assert dict(zip(ages["feed"], ages["age_days"])) == {"nvd": 1, "epss": 11}
    assert feeds.stale_feeds(versions, "2019-07-01", max_age_days=7)["feed"].tolist() == ["epss"]


def test_device_cpes_cover_every_catalogue_model_with_a_source():
    table = read_device_cpes()
    assert set(table["device"]) == {d.name for d in DEVICES}
    assert table["source"].str.len().gt(0).all()
    assert (table.loc[table["cpe"].isna(), "source"] == "no NVD CPE found").all()
    hue = table[table["device"] == "Philips Hue Bridge"]
    assert set(hue["product"]) == {"hue_bridge_v2_firmware", "hue_bridge_bsb002_firmware", "hue_firmware"}
    assert hue["source"].str.contains("CVE-2020-6007|CVE-2017-14797|CVE-2018-7580").all()


def test_device_cpes_with_a_bad_name_are_refused_naming_the_line(tmp_path):
    path = tmp_path / "device_cpes.csv"
    path.write_text("device,cpe,source\nLamp hub,cpe:2.3:o:example_vendor,FICTIONAL\n")
    with pytest.raises(DeviceCpeError, match="device_cpes.csv line 2: 'cpe:2.3:o:example_vendor' is not a CPE 2.3"):
        read_device_cpes(path)
