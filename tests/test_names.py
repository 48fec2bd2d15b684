import pytest

from peerproxyd.names import origin_label, split_origin_label, valid_device_id, valid_service_name


@pytest.mark.parametrize("name", ["a", "camera-pi", "x" * 40, "0-9"])
def test_valid_device_ids(name):
    assert valid_device_id(name)


@pytest.mark.parametrize("name", ["", "-a", "a-", "A", "a--b", "x" * 41, "a_b", "a.b", "a\n"])
def test_invalid_device_ids(name):
    assert not valid_device_id(name)


def test_service_names():
    assert valid_service_name("ha")
    assert not valid_service_name("x" * 23)
    assert not valid_service_name("home--assistant")


def test_origin_label_round_trip():
    assert origin_label("camera-pi", "camera") == "camera-pi--camera"
    assert split_origin_label("camera-pi--camera") == ("camera-pi", "camera")
    assert split_origin_label("camera-pi") is None
    assert split_origin_label("Camera--x") is None


def test_origin_label_fits_a_dns_label():
    assert len(origin_label("d" * 40, "s" * 21)) == 63
    with pytest.raises(ValueError, match="longer than 63"):
        origin_label("d" * 40, "s" * 22)
