import pytest

from peerproxyd.names import origin_label, split_origin_label, valid_device_id, valid_service_name

DEVICE = "abcdefghijklmnopqrstuvwxyz234567"


@pytest.mark.parametrize("name", [DEVICE, "a" * 32, "7" * 32])
def test_valid_device_ids(name):
    assert valid_device_id(name)


@pytest.mark.parametrize(
    "name",
    ["", "a", "camera-pi", "a" * 31, "a" * 33, "A" * 32, "a" * 31 + "1", "a" * 31 + "8",
     "a" * 30 + "--", "a" * 31 + "\n"],
)
def test_invalid_device_ids(name):
    assert not valid_device_id(name)


def test_service_names():
    assert valid_service_name("ha")
    assert valid_service_name("x" * 29)
    assert not valid_service_name("x" * 30)
    assert not valid_service_name("home--assistant")


def test_origin_label_round_trip():
    assert origin_label(DEVICE, "camera") == f"{DEVICE}--camera"
    assert split_origin_label(f"{DEVICE}--camera") == (DEVICE, "camera")
    assert split_origin_label(DEVICE) is None
    assert split_origin_label("camera-pi--camera") is None
    assert split_origin_label(DEVICE.upper() + "--x") is None


def test_longest_origin_label_fits_a_dns_label():
    assert len(origin_label(DEVICE, "s" * 29)) == 63
    with pytest.raises(ValueError):
        origin_label(DEVICE, "s" * 30)
