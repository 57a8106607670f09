from iot_assets.contracts import catalogue


def test_catalogue_has_the_25_published_devices():
    assert len(catalogue.DEVICES) == 25
    assert sum(d.records for d in catalogue.DEVICES) == 23_089_118
    assert len(catalogue.BY_MAC) == 25 and len(catalogue.BY_ARCHIVE) == 25
    assert catalogue.GATEWAY_MAC not in catalogue.BY_MAC


def test_archive_names_follow_the_published_rule():
    assert catalogue.device_for_archive("google_home_gen1.tar.gz00").name == "Google Home gen1"
    assert catalogue.device_for_archive("planex_camera_one_shot!.tar.gz").name == "PLANEX camera one shot!"
    assert catalogue.device_for_archive("nature_remo.tar.gz").mac == "60:01:94:54:6b:e8"
    assert catalogue.device_for_archive("readme.txt") is None
