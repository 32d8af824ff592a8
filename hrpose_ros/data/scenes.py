"""Synthetic scenes: single-object views, cut-and-paste onto photographs, and bin-picking piles.

- views (HRPose Sec. IV.1, single-shot Sec. 3.3): one object seen from the upper
  hemisphere of its z axis with an in-plane rotation, at distances that fit a 640x480
  camera, placed anywhere in the image, on a random background;
- cut-and-paste (HRPose Fig. 3b): several objects at random poses rendered together (so
  occlusions are consistent), then pasted onto a photograph or texture with feathered edges;
- bin: instances of several objects dropped into a tray with pybullet physics (z up, tray
  floor at z = 0) and seen from above, so piles give occlusion and repeated objects.

Every generator returns :class:`SceneFrame` records in metres, written to BOP by make_data.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import trimesh
from scipy.spatial.transform import Rotation

from hrpose_ros import bop_format, bop_models
from hrpose_ros.data.backgrounds import BackgroundSource
from hrpose_ros.render import Lighting, Renderer, RenderOutput
from hrpose_ros.types import CameraModel, ObjectModel

__all__ = [
    "DEFAULT_CAMERA",
    "TRAY_ID",
    "BinScene",
    "SceneFrame",
    "SceneGenerator",
    "look_at",
    "random_bin_camera",
    "random_lighting",
    "render_bin_sequence",
    "tray_model",
]

logger = logging.getLogger(__name__)

DEFAULT_CAMERA = CameraModel(K=np.array([[572.4, 0.0, 319.5], [0.0, 573.6, 239.5], [0.0, 0.0, 1.0]]),
                             width=640, height=480)
"""A 640x480 camera with LINEMOD's focal lengths (Kinect v1) and the principal point at the centre."""

TRAY_ID = 0
"""Renderer id of the tray (BOP object ids start at 1): rendered, never annotated."""

TRAY_INNER = (0.40, 0.30)  # metres, x by y
TRAY_WALL = (0.012, 0.07)  # thickness, height


@dataclass(frozen=True)
class SceneFrame:
    """One synthetic frame: rgb (H, W, 3) uint8, depth (H, W) float32 m, K, annotations in metres.

    ``instances`` are bop_format.GtInstance (model to camera); ``masks_visib``/``masks_full`` one
    (H, W) bool mask each; ``R_w2c``/``t_w2c`` the world-to-camera pose for bin scenes.
    """

    rgb: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    instances: tuple
    masks_visib: tuple
    masks_full: tuple
    R_w2c: np.ndarray | None = None
    t_w2c: np.ndarray | None = None


def random_lighting(rng: np.random.Generator) -> Lighting:
    """Return a random :class:`Lighting`: light from in front of the camera's hemisphere, varied strength."""
    direction = rng.normal(size=3)
    direction[2] = abs(direction[2]) + 0.3  # from behind the camera towards the scene
    return Lighting(direction=tuple(direction / np.linalg.norm(direction)), ambient=rng.uniform(0.3, 0.6),
                    diffuse=rng.uniform(0.4, 0.8), specular=rng.uniform(0.0, 0.3),
                    shininess=rng.uniform(8.0, 64.0))


def look_at(eye, target, up) -> tuple[np.ndarray, np.ndarray]:
    """Return (R_w2c (3, 3), t_w2c (3,) m) of an OpenCV camera at ``eye`` looking at ``target``.

    ``up`` (world) appears upwards in the image (towards -y of the camera).
    """
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    if np.linalg.norm(z) < 1e-9:
        raise ValueError("eye/target: the camera must not sit on its target")
    z /= np.linalg.norm(z)
    y = -(up - np.dot(up, z) * z)
    if np.linalg.norm(y) < 1e-6:
        raise ValueError("up: must not be parallel to the viewing direction")
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    R = np.stack([x, y, z])
    return R, -R @ eye


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the smallest (3, 3) rotation taking unit vector ``a`` to unit vector ``b``."""
    axis = np.cross(a, b)
    s, c = np.linalg.norm(axis), float(np.dot(a, b))
    if s < 1e-12:
        return np.eye(3) if c > 0 else Rotation.from_rotvec(np.pi * np.array([1.0, 0, 0])).as_matrix()
    return Rotation.from_rotvec(axis / s * math.atan2(s, c)).as_matrix()


def _ray(K: np.ndarray, u: float, v: float) -> np.ndarray:
    ray = np.linalg.solve(K, [u, v, 1.0])
    return ray / np.linalg.norm(ray)


def tray_model(cache_dir) -> ObjectModel:
    """Return the tray (floor, four walls, inside 40 x 30 cm) as an ObjectModel; .ply in ``cache_dir``."""
    (inner_x, inner_y), (wall, height) = TRAY_INNER, TRAY_WALL
    parts = [trimesh.creation.box(extents=(inner_x + 2 * wall, inner_y + 2 * wall, wall),
                                  transform=trimesh.transformations.translation_matrix((0, 0, -wall / 2)))]
    move = trimesh.transformations.translation_matrix
    for sign in (-1, 1):
        parts.append(trimesh.creation.box(extents=(wall, inner_y + 2 * wall, height),
                                          transform=move((sign * (inner_x + wall) / 2, 0, height / 2))))
        parts.append(trimesh.creation.box(extents=(inner_x, wall, height),
                                          transform=move((0, sign * (inner_y + wall) / 2, height / 2))))
    mesh = trimesh.util.concatenate(parts)
    colours = np.tile([70, 90, 110, 255], (len(mesh.vertices), 1))
    mesh.visual = trimesh.visual.ColorVisuals(vertex_colors=colours)
    path = Path(cache_dir) / "tray.ply"
    bop_models.write_ply_model(path, mesh, encoding="binary")
    return ObjectModel(obj_id=TRAY_ID, name="tray", points=np.asarray(mesh.vertices),
                       diameter=float(np.linalg.norm(mesh.extents)), mesh_path=str(path))


def random_bin_camera(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return (R_w2c, t_w2c) of a camera 0.45-0.75 m above the tray, tilted up to ~15 degrees, any roll."""
    eye = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.08, 0.08), rng.uniform(0.45, 0.75)])
    target = np.array([rng.uniform(-0.04, 0.04), rng.uniform(-0.03, 0.03), 0.0])
    roll = rng.uniform(0, 2 * np.pi)
    return look_at(eye, target, (math.cos(roll), math.sin(roll), 0.0))


class BinScene:
    """Instances dropped into the tray by pybullet physics; ``poses`` [(obj_id, R_m2w, t_m2w m)], z up."""

    def __init__(self, objects: Sequence[ObjectModel], rng: np.random.Generator,
                 instances: tuple = (8, 15), types: tuple = (2, 4), max_steps: int = 480):
        import pybullet

        if not objects:
            raise ValueError("objects: expected at least one object to drop into the tray")
        n_types = int(rng.integers(min(types[0], len(objects)), min(types[1], len(objects)) + 1))
        chosen = [objects[i] for i in rng.choice(len(objects), size=n_types, replace=False)]
        n = int(rng.integers(instances[0], instances[1] + 1))
        # Every type at least once, one type at least twice: bins hold several of one part.
        picks = list(range(n_types)) + [0] + list(rng.integers(0, n_types, size=max(0, n - n_types - 1)))
        client = pybullet.connect(pybullet.DIRECT)
        try:
            pybullet.setGravity(0, 0, -9.81, physicsClientId=client)
            # 120 Hz is stable for 5-20 cm parts falling 10-80 cm and halves the cost of 240 Hz.
            pybullet.setPhysicsEngineParameter(fixedTimeStep=1 / 120, physicsClientId=client)
            self._add_tray(pybullet, client)
            shapes = {}
            bodies = []
            for k, pick in enumerate(picks):
                obj = chosen[pick]
                if obj.obj_id not in shapes:
                    hull = trimesh.convex.convex_hull(obj.points).vertices
                    shapes[obj.obj_id] = pybullet.createCollisionShape(
                        pybullet.GEOM_MESH, vertices=np.asarray(hull).tolist(), physicsClientId=client)
                # Dropped over the middle of the tray, so they pile up and hide each other.
                position = [rng.uniform(-0.08, 0.08), rng.uniform(-0.05, 0.05), 0.1 + 0.05 * k]
                body = pybullet.createMultiBody(baseMass=0.1, baseCollisionShapeIndex=shapes[obj.obj_id],
                                                basePosition=position,
                                                baseOrientation=Rotation.random(random_state=rng).as_quat().tolist(),
                                                physicsClientId=client)
                pybullet.changeDynamics(body, -1, lateralFriction=0.6, rollingFriction=0.001,
                                        physicsClientId=client)
                bodies.append((obj.obj_id, body))
            for step in range(max_steps):
                pybullet.stepSimulation(physicsClientId=client)
                if step % 30 == 29 and step > 120:
                    speeds = [np.linalg.norm(pybullet.getBaseVelocity(b, physicsClientId=client)[0])
                              for _, b in bodies]
                    if max(speeds) < 0.005:
                        break
            self.poses = []
            for obj_id, body in bodies:
                position, quaternion = pybullet.getBasePositionAndOrientation(body, physicsClientId=client)
                inside = abs(position[0]) < TRAY_INNER[0] / 2 and abs(position[1]) < TRAY_INNER[1] / 2
                if inside and -0.01 < position[2] < 0.5:
                    R = Rotation.from_quat(quaternion).as_matrix()
                    self.poses.append((obj_id, R, np.array(position)))
        finally:
            pybullet.disconnect(physicsClientId=client)

    @staticmethod
    def _add_tray(pybullet, client: int) -> None:
        (inner_x, inner_y), (wall, height) = TRAY_INNER, TRAY_WALL
        boxes = [((inner_x / 2 + wall, inner_y / 2 + wall, wall / 2), (0, 0, -wall / 2))]
        for sign in (-1, 1):
            boxes.append(((wall / 2, inner_y / 2 + wall, height / 2),
                          (sign * (inner_x + wall) / 2, 0, height / 2)))
            boxes.append(((inner_x / 2, wall / 2, height / 2),
                          (0, sign * (inner_y + wall) / 2, height / 2)))
        for half, centre in boxes:
            shape = pybullet.createCollisionShape(pybullet.GEOM_BOX, halfExtents=half, physicsClientId=client)
            pybullet.createMultiBody(baseMass=0, baseCollisionShapeIndex=shape, basePosition=centre,
                                     physicsClientId=client)

    def camera_poses(self, R_w2c, t_w2c) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Return [(obj_id, R_m2c, t_m2c m)] of the dropped instances seen by a camera at R_w2c, t_w2c."""
        R_w2c, t_w2c = np.asarray(R_w2c, dtype=np.float64), np.asarray(t_w2c, dtype=np.float64)
        return [(obj_id, R_w2c @ R, R_w2c @ t + t_w2c) for obj_id, R, t in self.poses]


class SceneGenerator:
    """Makes :class:`SceneFrame` records of ``objects`` with one renderer (tray included) and backgrounds."""

    def __init__(self, objects: Sequence[ObjectModel], camera: CameraModel = DEFAULT_CAMERA,
                 backgrounds: BackgroundSource | None = None, backend: str = "auto"):
        if not objects:
            raise ValueError("objects: expected at least one object model")
        self.objects = list(objects)
        self.camera = camera
        self._cache = tempfile.TemporaryDirectory(prefix="hrpose-scenes-")
        self.tray = tray_model(self._cache.name)
        self.renderer = Renderer([*self.objects, self.tray], camera.width, camera.height, backend=backend)
        self.backgrounds = backgrounds or BackgroundSource(camera.width, camera.height)

    def close(self) -> None:
        """Release the renderer and the tray's cache folder."""
        self.renderer.release()
        self._cache.cleanup()

    def __enter__(self) -> SceneGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------- helpers

    def _composite(self, out: RenderOutput, background: np.ndarray) -> np.ndarray:
        """Return the rendering pasted on ``background``, edges feathered over one pixel (Dwibedi et al.)."""
        inside = out.depth > 0
        rows, cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
        image = background.copy()
        if len(rows) == 0:
            return image
        # Blend only inside the objects' bounding box (plus the feather): most of the frame is background.
        y0, y1 = max(rows[0] - 2, 0), rows[-1] + 3
        x0, x1 = max(cols[0] - 2, 0), cols[-1] + 3
        crop = inside[y0:y1, x0:x1]
        alpha = cv2.GaussianBlur(crop.astype(np.float32), (3, 3), 0.7)
        alpha = np.maximum(alpha, crop * 0.5)[..., None]
        blended = out.rgb[y0:y1, x0:x1] * alpha + background[y0:y1, x0:x1] * (1.0 - alpha) + 0.5
        image[y0:y1, x0:x1] = blended.astype(np.uint8)
        return image

    def _frame(self, out: RenderOutput, poses, background, R_w2c=None, t_w2c=None) -> SceneFrame:
        instances = tuple(bop_format.GtInstance(obj_id=o, R=R, t=t) for o, R, t in poses)
        return SceneFrame(rgb=self._composite(out, background), depth=out.depth, K=self.camera.K,
                          instances=instances, masks_visib=tuple(out.masks_visib),
                          masks_full=tuple(out.masks_full), R_w2c=R_w2c, t_w2c=t_w2c)

    def _place(self, rng: np.random.Generator, obj: ObjectModel, R_view: np.ndarray, fraction: tuple
               ) -> tuple[np.ndarray, np.ndarray]:
        """Return (R, t) putting ``obj`` (turned by R_view, seen along +z) at a random pixel and distance."""
        K, width, height = self.camera.K, self.camera.width, self.camera.height
        size_px = rng.uniform(*fraction) * height
        distance = K[1, 1] * obj.diameter / size_px
        margin = min(size_px / 2, 0.45 * min(width, height))
        u, v = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
        ray = _ray(K, u, v)
        R_align = _rotation_between(np.array([0.0, 0.0, 1.0]), ray)
        return R_align @ R_view, distance * ray

    # ------------------------------------------------------------------------- the three kinds

    def views(self, rng: np.random.Generator, obj: ObjectModel | None = None) -> SceneFrame:
        """Return one object seen from its upper hemisphere (elevation 5-90 deg) with in-plane rotation."""
        obj = obj or self.objects[int(rng.integers(len(self.objects)))]
        azimuth = rng.uniform(0, 2 * np.pi)
        elevation = math.asin(rng.uniform(math.sin(math.radians(5)), 1.0))  # uniform on the cap's area
        eye = np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                        math.sin(elevation)])
        up = (0.0, 0.0, 1.0) if elevation < math.radians(85) else (math.cos(azimuth), math.sin(azimuth), 0.0)
        R_view, _ = look_at(eye, np.zeros(3), up)
        in_plane = Rotation.from_rotvec([0.0, 0.0, rng.uniform(-np.pi, np.pi)]).as_matrix()
        R, t = self._place(rng, obj, in_plane @ R_view, (0.2, 0.6))
        poses = [(obj.obj_id, R, t)]
        out = self.renderer.render(self.camera.K, poses, random_lighting(rng))
        return self._frame(out, poses, self.backgrounds(rng))

    def cutpaste(self, rng: np.random.Generator, count: tuple = (2, 6),
                 min_visib_fract: float = 0.1) -> SceneFrame:
        """Return 2-6 objects at random rotations, pasted on a background; barely visible ones are dropped."""
        n = int(rng.integers(count[0], count[1] + 1))
        poses: list = []
        for _ in range(n):
            obj = self.objects[int(rng.integers(len(self.objects)))]
            for _attempt in range(10):  # no interpenetrating bounding spheres
                R, t = self._place(rng, obj, Rotation.random(random_state=rng).as_matrix(), (0.15, 0.45))
                clear = all(np.linalg.norm(t - t2) > 0.5 * (obj.diameter + self._diameter(o2))
                            for o2, _, t2 in poses)
                if clear:
                    poses.append((obj.obj_id, R, t))
                    break
        lighting = random_lighting(rng)
        while True:
            out = self.renderer.render(self.camera.K, poses, lighting)
            fractions = [v.sum() / max(f.sum(), 1) for v, f in zip(out.masks_visib, out.masks_full)]
            keep = [p for p, f in zip(poses, fractions) if f >= min_visib_fract]
            if len(keep) == len(poses) or not keep:
                break
            poses = keep  # re-render so no unannotated sliver stays in the image
        return self._frame(out, poses, self.backgrounds(rng))

    def _diameter(self, obj_id: int) -> float:
        return next(o.diameter for o in self.objects if o.obj_id == obj_id)

    def bin_frame(self, scene: BinScene, R_w2c, t_w2c, rng: np.random.Generator) -> SceneFrame:
        """Return the tray of ``scene`` seen by the camera at (R_w2c, t_w2c) on a random background."""
        poses = scene.camera_poses(R_w2c, t_w2c)
        tray = (TRAY_ID, np.asarray(R_w2c, dtype=np.float64), np.asarray(t_w2c, dtype=np.float64))
        out = self.renderer.render(self.camera.K, [tray, *poses], random_lighting(rng),
                                   full_masks=[False] + [True] * len(poses))
        out = RenderOutput(rgb=out.rgb, depth=out.depth, masks_visib=out.masks_visib[1:],
                           masks_full=out.masks_full[1:])
        return self._frame(out, poses, self.backgrounds(rng), R_w2c, t_w2c)

    def bin(self, rng: np.random.Generator, views: int = 1) -> list[SceneFrame]:
        """Return ``views`` frames of one new pile, each from a random camera above the tray."""
        scene = BinScene(self.objects, rng)
        return [self.bin_frame(scene, *random_bin_camera(rng), rng) for _ in range(views)]


def render_bin_sequence(
    objects: Sequence[ObjectModel],
    camera_poses: Sequence[tuple],
    seed: int = 0,
    camera: CameraModel = DEFAULT_CAMERA,
) -> list[SceneFrame]:
    """Return one pile (dropped with ``seed``) seen from each (R_w2c, t_w2c m) of ``camera_poses``, in order.

    The world frame is the tray's: z up, floor at z = 0, origin at the tray centre. The
    background (one photograph or texture) and lighting stay the same through the sequence.
    """
    rng = np.random.default_rng(seed)
    scene = BinScene(list(objects), rng)
    with SceneGenerator(objects, camera) as generator:
        background = generator.backgrounds(rng)
        lighting = random_lighting(rng)
        frames = []
        for R_w2c, t_w2c in camera_poses:
            poses = scene.camera_poses(R_w2c, t_w2c)
            tray = (TRAY_ID, np.asarray(R_w2c, dtype=np.float64), np.asarray(t_w2c, dtype=np.float64))
            out = generator.renderer.render(camera.K, [tray, *poses], lighting,
                                            full_masks=[False] + [True] * len(poses))
            out = RenderOutput(rgb=out.rgb, depth=out.depth, masks_visib=out.masks_visib[1:],
                               masks_full=out.masks_full[1:])
            frames.append(generator._frame(out, poses, background, R_w2c, t_w2c))
    return frames
