"""A camera in its own process: publishes N 640x480 rgb8 images and their camera_info at a fixed rate.

    python -m benchmarks.camera_peer --n 300 --rate 30 --reliability best_effort --stamp-base 1000

Waits until something subscribes both topics, publishes each frame once (image, then camera_info,
as image_transport's CameraPublisher does; stamp ``stamp_base + i`` seconds), lingers a moment so
best-effort samples leave the process, and prints ``published N``. Exit code 3 when nothing
compatible subscribed within ``--wait`` seconds (e.g. a best-effort camera and a reliable reader).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

WIDTH, HEIGHT = 640, 480
FRAME_ID = "camera_color_optical_frame"
K = ((615.0, 0.0, 320.0), (0.0, 615.0, 240.0), (0.0, 0.0, 1.0))


def camera_messages(stamp_sec: int, value: int = 90):
    """Return (Image, CameraInfo) of a uniform 640x480 rgb8 frame stamped ``stamp_sec`` seconds."""
    from sensor_msgs.msg import CameraInfo, Image

    image = Image(height=HEIGHT, width=WIDTH, encoding="rgb8", step=3 * WIDTH,
                  data=np.full(HEIGHT * WIDTH * 3, value, np.uint8).tobytes())
    P = np.zeros((3, 4))
    P[:, :3] = K
    info = CameraInfo(width=WIDTH, height=HEIGHT, distortion_model="plumb_bob", d=[0.0] * 5,
                      k=np.ravel(K).tolist(), p=P.ravel().tolist(), r=np.eye(3).ravel().tolist())
    for msg in (image, info):
        msg.header.stamp.sec = int(stamp_sec)
        msg.header.frame_id = FRAME_ID
    return image, info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="frames to publish")
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second")
    parser.add_argument("--reliability", choices=("reliable", "best_effort"), default="best_effort")
    parser.add_argument("--depth", type=int, default=10, help="history depth (keep last)")
    parser.add_argument("--namespace", default="/camera")
    parser.add_argument("--stamp-base", type=int, default=1_000, help="stamp of frame 0 (s)")
    parser.add_argument("--wait", type=float, default=60.0, help="s to wait for subscribers")
    args = parser.parse_args(argv)

    import rclpy
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    rclpy.init()
    node = rclpy.create_node("camera_peer")
    qos = QoSProfile(depth=args.depth, reliability=QoSReliabilityPolicy.RELIABLE
                     if args.reliability == "reliable" else QoSReliabilityPolicy.BEST_EFFORT)
    image_pub = node.create_publisher(Image, f"{args.namespace}/image_raw", qos)
    info_pub = node.create_publisher(CameraInfo, f"{args.namespace}/camera_info", qos)
    deadline = time.monotonic() + args.wait
    while image_pub.get_subscription_count() == 0 or info_pub.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            print("published 0 (no compatible subscriber)", flush=True)
            return 3
        time.sleep(0.05)
    time.sleep(1.0)  # discovery of the remaining endpoints settles
    frames = [camera_messages(args.stamp_base + i, 60 + i % 100) for i in range(args.n)]
    start = time.monotonic()
    for i, (image, info) in enumerate(frames):
        image_pub.publish(image)
        info_pub.publish(info)
        time.sleep(max(0.0, start + (i + 1) / args.rate - time.monotonic()))
    time.sleep(2.0)  # best-effort samples and reliable repairs leave before the participant goes
    print(f"published {args.n}", flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
