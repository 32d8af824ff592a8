"""The core's shared conversions and checks: header stamps in nanoseconds, device names."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hrpose_ros.types import checked_device, ns_to_stamp, stamp_to_ns


def test_stamp_nanoseconds_round_trip_through_sec_and_nanosec():
    stamp = SimpleNamespace(sec=1_700_000_000, nanosec=999_999_999)
    assert stamp_to_ns(stamp) == 1_700_000_000_999_999_999
    assert ns_to_stamp(1_700_000_000_999_999_999) == (1_700_000_000, 999_999_999)
    assert ns_to_stamp(1_000_000_000) == (1, 0)
    sec, nanosec = ns_to_stamp(stamp_to_ns(SimpleNamespace(sec=12, nanosec=345)))
    assert (sec, nanosec) == (12, 345) and type(sec) is int and type(nanosec) is int


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12"])
def test_checked_device_accepts_cpu_cuda_and_cuda_n(device):
    assert checked_device(device) == device


def test_checked_device_names_the_parameter_and_the_choices():
    assert checked_device("auto", allow_auto=True) == "auto"
    with pytest.raises(ValueError, match=r"^device: expected cpu, cuda or cuda:N, got 'auto'$"):
        checked_device("auto")
    expected = r"^parameter 'device': expected auto, cpu, cuda or cuda:N, got 'gpu'$"
    with pytest.raises(ValueError, match=expected):
        checked_device("gpu", "parameter 'device'", allow_auto=True)
    for bad in ("cuda:", "cuda:x", "CPU", " cpu", None, 0):
        with pytest.raises(ValueError, match="device: expected"):
            checked_device(bad)
