"""The fallback approximate-time synchroniser, without ROS: stamps in ns, messages are strings."""

import threading

import pytest

from hrpose_ros.sync import ApproximateTimeSynchronizer

MS = 1_000_000  # nanoseconds


def test_exact_stamps_match_in_either_arrival_order():
    got = []
    sync = ApproximateTimeSynchronizer(2, queue_size=5, slop=0.0, callback=lambda *m: got.append(m))
    assert sync.add(0, 100 * MS, "image0") is None
    assert sync.add(1, 100 * MS, "info0") == ("image0", "info0")
    assert sync.add(1, 200 * MS, "info1") is None
    assert sync.add(0, 200 * MS, "image1") == ("image1", "info1")
    assert got == [("image0", "info0"), ("image1", "info1")]
    assert sync.pending() == [0, 0]
    assert sync.dropped == [0, 0]


def test_stamps_within_slop_match_and_outside_do_not():
    sync = ApproximateTimeSynchronizer(2, queue_size=5, slop=0.010)
    assert sync.add(0, 100 * MS, "a") is None
    assert sync.add(1, 111 * MS, "b") is None  # 11 ms apart > 10 ms slop
    assert sync.add(1, 109 * MS, "c") == ("a", "c")  # 9 ms apart
    # "b" (111 ms) is newer than the emitted "c" and stays queued for a later image.
    assert sync.pending() == [0, 1]
    assert sync.add(0, 115 * MS, "d") == ("d", "b")


def test_slop_boundary_is_inclusive():
    sync = ApproximateTimeSynchronizer(2, queue_size=5, slop=0.005)
    sync.add(0, 0, "a")
    assert sync.add(1, 5 * MS, "b") == ("a", "b")


def test_closest_candidate_wins():
    sync = ApproximateTimeSynchronizer(2, queue_size=5, slop=0.050)
    sync.add(1, 100 * MS, "info100")
    sync.add(1, 130 * MS, "info130")
    sync.add(1, 160 * MS, "info160")
    # 128 ms is within the slop of all three; 130 is nearest.
    assert sync.add(0, 128 * MS, "image128") == ("image128", "info130")
    # info100 is older than the emitted pair: discarded and counted; info160 waits.
    assert sync.pending() == [0, 1]
    assert sync.dropped == [0, 1]


def test_three_inputs_pick_the_tightest_set():
    sync = ApproximateTimeSynchronizer(3, queue_size=5, slop=0.020)
    sync.add(0, 100 * MS, "a100")
    sync.add(0, 112 * MS, "a112")
    sync.add(1, 110 * MS, "b110")
    # Sets with c115: (a100, b110) spans 15 ms, (a112, b110) spans 5 ms.
    assert sync.add(2, 115 * MS, "c115") == ("a112", "b110", "c115")
    assert sync.dropped == [1, 0, 0]


def test_queue_keeps_only_the_newest_queue_size_messages():
    sync = ApproximateTimeSynchronizer(2, queue_size=3, slop=0.0)
    for k in range(5):
        assert sync.add(0, k * 100 * MS, f"image{k}") is None
    assert sync.pending() == [3, 0]
    assert sync.dropped == [2, 0]
    assert sync.add(1, 0, "info0") is None  # image0 was dropped by the queue
    assert sync.add(1, 200 * MS, "info2") == ("image2", "info2")


def test_output_stamps_never_go_backwards():
    sync = ApproximateTimeSynchronizer(2, queue_size=5, slop=0.0)
    sync.add(0, 100 * MS, "image100")
    sync.add(0, 200 * MS, "image200")
    assert sync.add(1, 200 * MS, "info200") == ("image200", "info200")
    assert sync.dropped == [1, 0]  # image100 can no longer be emitted in order
    # A late camera_info for 100 ms is refused rather than queued for ever.
    assert sync.add(1, 100 * MS, "info100") is None
    assert sync.pending() == [0, 0]
    assert sync.dropped == [1, 1]


def test_never_matching_input_is_bounded_and_counted():
    # camera_info never arrives: images keep being dropped, memory stays bounded.
    sync = ApproximateTimeSynchronizer(2, queue_size=4, slop=0.01)
    for k in range(100):
        assert sync.add(0, k * 33 * MS, k) is None
    assert sync.pending() == [4, 0]
    assert sync.dropped == [96, 0]


def test_concurrent_adds_emit_each_pair_once():
    got = []
    sync = ApproximateTimeSynchronizer(2, queue_size=1000, slop=0.0, callback=lambda *m: got.append(m))
    n = 500

    def feed(index):
        for k in range(n):
            sync.add(index, k * MS, (index, k))

    threads = [threading.Thread(target=feed, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Every emitted pair has equal stamps; pairs never repeat and stamps only increase.
    ks = [a[1] for a, b in got]
    assert all(a[1] == b[1] for a, b in got)
    assert ks == sorted(set(ks))
    assert len(got) + sync.dropped[0] + sync.pending()[0] == n


@pytest.mark.parametrize(
    "kwargs, name",
    [({"num_inputs": 1, "queue_size": 5, "slop": 0.1}, "num_inputs"),
     ({"num_inputs": 2, "queue_size": 0, "slop": 0.1}, "queue_size"),
     ({"num_inputs": 2, "queue_size": 5, "slop": -0.1}, "slop"),
     ({"num_inputs": 2, "queue_size": 5, "slop": float("nan")}, "slop")],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ApproximateTimeSynchronizer(**kwargs)


def test_bad_input_index_is_named():
    sync = ApproximateTimeSynchronizer(2, queue_size=5, slop=0.0)
    with pytest.raises(ValueError, match="index"):
        sync.add(2, 0, "x")
