"""The synchroniser after time goes back: a bag loop, a clock reset, or one stamp from the far future."""

from hrpose_ros.sync import ApproximateTimeSynchronizer

S = 1_000_000_000  # ns


def test_a_far_future_pair_does_not_block_the_frames_after_it():
    sync = ApproximateTimeSynchronizer(2, 5, 0.01)
    assert sync.add(0, 10 * S, "image10") is None
    assert sync.add(1, 10 * S, "info10") == ("image10", "info10")
    assert sync.add(0, 10**9 * S, "image_future") is None
    assert sync.add(1, 10**9 * S, "info_future") == ("image_future", "info_future")
    assert sync.add(0, 11 * S, "image11") is None
    assert sync.add(1, 11 * S, "info11") == ("image11", "info11")
    assert sync.resets == 1


def test_a_bag_loop_starts_afresh_but_jitter_is_still_refused():
    sync = ApproximateTimeSynchronizer(2, 5, 0.01)
    sync.add(0, 100 * S, "image100")
    sync.add(1, 100 * S, "info100")
    assert sync.add(1, 100 * S - S // 2, "late info") is None  # 0.5 s back: late, refused
    assert (sync.resets, sync.dropped) == (0, [0, 1])
    sync.add(0, 3 * S, "image3")  # the bag starts again
    assert sync.add(1, 3 * S, "info3") == ("image3", "info3")
    assert sync.resets == 1


def test_the_present_survives_a_far_future_set_emitted_between_its_image_and_camera_info():
    sync = ApproximateTimeSynchronizer(2, 5, 0.01)
    assert sync.add(0, 10**9 * S, "image_future") is None
    assert sync.add(0, 20 * S, "image20") is None
    assert sync.add(1, 10**9 * S, "info_future") == ("image_future", "info_future")
    assert sync.add(1, 20 * S, "info20") == ("image20", "info20")
