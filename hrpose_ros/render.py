"""Headless CPU renderer: RGB, metric depth and per-instance masks for a pinhole camera and object poses.

OpenGL 3.3 through moderngl on an EGL context (Mesa llvmpipe on machines without a GPU):
about 2-3 ms per 640x480 frame here, against 25 ms for pybullet's EGL plugin and 125 ms for
its TinyRenderer (measured, see shared notes). When no EGL display can be opened the
renderer falls back to pybullet's TinyRenderer (:class:`TinyRendererBackend`), which needs
no GL at all; the outputs are the same.

Conventions: poses map model points into the OpenCV camera frame (x right, y down, z
forward; ``x_cam = R @ x_model + t``, metres); ``K`` is in pixels with integer pixel
coordinates at pixel centres (OpenCV). Depth is the camera z of the nearest surface in
metres (0 = no object), as in BOP's depth images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import trimesh

from hrpose_ros import bop_models
from hrpose_ros.geometry import box_corners_3d, check_intrinsics, check_rotation, quaternion_from_matrix
from hrpose_ros.types import ObjectModel

__all__ = ["Lighting", "RenderOutput", "Renderer", "TinyRendererBackend", "projection_matrix"]

logger = logging.getLogger(__name__)


class RenderOutput(NamedTuple):
    """One rendered frame.

    ``rgb`` (H, W, 3) uint8 (black where there is no object); ``depth`` (H, W) float32 metres
    (0 = nothing); ``masks_visib`` / ``masks_full`` one (H, W) bool mask per pose: the visible
    pixels, and the whole silhouette as if the instance were alone.
    """

    rgb: np.ndarray
    depth: np.ndarray
    masks_visib: list
    masks_full: list


@dataclass(frozen=True)
class Lighting:
    """A directional light in the camera frame plus ambient light; shading is Lambert + Blinn-Phong.

    ``direction`` (3,) points from the light towards the scene (camera frame; (0, 0, 1) is a
    headlight); ``ambient``, ``diffuse``, ``specular`` scale the object's colour; ``shininess``
    is the Phong exponent.
    """

    direction: tuple = (0.3, 0.5, 1.0)
    ambient: float = 0.45
    diffuse: float = 0.65
    specular: float = 0.15
    shininess: float = 24.0


_VERTEX_SHADER = """
#version 330
uniform mat3 R;
uniform vec3 t;
uniform mat4 P;
in vec3 in_position;
in vec3 in_normal;
in vec2 in_uv;
in vec3 in_colour;
out vec3 v_cam;
out vec3 v_normal;
out vec2 v_uv;
out vec3 v_colour;
void main() {
    v_cam = R * in_position + t;
    v_normal = R * in_normal;
    v_uv = in_uv;
    v_colour = in_colour;
    gl_Position = P * vec4(v_cam, 1.0);
}
"""

_FRAGMENT_SHADER = """
#version 330
uniform sampler2D texture0;
uniform vec3 light_direction;
uniform vec4 light;  // ambient, diffuse, specular, shininess
uniform float instance;
in vec3 v_cam;
in vec3 v_normal;
in vec2 v_uv;
in vec3 v_colour;
layout(location = 0) out vec4 out_colour;
layout(location = 1) out float out_depth;
layout(location = 2) out float out_instance;
void main() {
    vec3 base = v_colour * texture(texture0, vec2(v_uv.x, 1.0 - v_uv.y)).rgb;
    vec3 n = normalize(v_normal);
    vec3 view = normalize(-v_cam);
    if (dot(n, view) < 0.0) n = -n;  // two-sided: open meshes and flipped normals still shade
    vec3 to_light = -normalize(light_direction);
    float lambert = max(dot(n, to_light), 0.0);
    float phong = pow(max(dot(n, normalize(to_light + view)), 0.0), light.w);
    vec3 colour = base * (light.x + light.y * lambert) + light.z * phong;
    out_colour = vec4(clamp(colour, 0.0, 1.0), 1.0);
    out_depth = v_cam.z;
    out_instance = instance;
}
"""


def projection_matrix(K, width: int, height: int, near: float, far: float) -> np.ndarray:
    """Return the (4, 4) OpenGL clip matrix of an OpenCV camera ``K``, image rows counted bottom-up.

    Pixel (u, v) of OpenCV (centres at integers) lands at window (u + 0.5, height - v - 0.5),
    so rows read back from GL are flipped once to give the OpenCV image.
    """
    K = check_intrinsics(K)
    fx, fy, skew, cx, cy = K[0, 0], K[1, 1], K[0, 1], K[0, 2], K[1, 2]
    return np.array([
        [2 * fx / width, 2 * skew / width, 2 * (cx + 0.5) / width - 1, 0],
        [0, -2 * fy / height, 1 - 2 * (cy + 0.5) / height, 0],
        [0, 0, (far + near) / (far - near), -2 * far * near / (far - near)],
        [0, 0, 1, 0],
    ])


def _mesh_arrays(obj: ObjectModel) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Return (vertices (V, 11) float32: xyz m, normal, uv, rgb 0-1; faces (F, 3) int32; texture or None)."""
    if not obj.mesh_path:
        raise ValueError(f"objects: {obj.name} has no mesh_path (expected a BOP .ply model)")
    mesh = bop_models.read_ply_model(obj.mesh_path)
    if len(mesh.faces) == 0:
        raise ValueError(f"{obj.mesh_path}: the model has no faces")
    count = len(mesh.vertices)
    uv = np.zeros((count, 2))
    colour = np.ones((count, 3))
    texture = None
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        image = getattr(visual.material, "image", None)
        if visual.uv is not None and image is not None:
            uv = np.asarray(visual.uv, dtype=np.float64)
            texture = np.asarray(image.convert("RGB"), dtype=np.uint8)
        else:
            colour = np.tile(np.asarray(visual.material.main_color[:3], dtype=np.float64) / 255, (count, 1))
    elif visual.kind is not None:
        colour = np.asarray(visual.vertex_colors[:, :3], dtype=np.float64) / 255.0
    vertices = np.hstack([mesh.vertices, mesh.vertex_normals, uv, colour]).astype(np.float32)
    return vertices, np.asarray(mesh.faces, dtype=np.int32), texture


def _check_pose(R, t, where: str) -> tuple[np.ndarray, np.ndarray]:
    R = check_rotation(np.asarray(R, dtype=np.float64), f"{where} R", tol=1e-3)
    t = np.asarray(t, dtype=np.float64)
    if t.shape != (3,) or not np.all(np.isfinite(t)):
        raise ValueError(f"{where} t: expected 3 finite numbers (metres), got {t!r}")
    return R, t


class Renderer:
    """Renders ``objects`` (BOP models with ``mesh_path``) into ``width`` x ``height`` images.

    ``backend``: "auto" (moderngl on EGL, else pybullet TinyRenderer), "egl" or "tiny".
    ``near``/``far`` (metres) bound the rendered depth.
    """

    def __init__(
        self,
        objects: Sequence[ObjectModel],
        width: int,
        height: int,
        near: float = 0.01,
        far: float = 10.0,
        backend: str = "auto",
    ):
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"width/height: expected positive sizes, got {width}x{height}")
        if not 0 < near < far:
            raise ValueError(f"near/far: expected 0 < near < far, got {near}, {far}")
        if backend not in ("auto", "egl", "tiny"):
            raise ValueError(f"backend: expected 'auto', 'egl' or 'tiny', got {backend!r}")
        self.objects = {int(o.obj_id): o for o in objects}
        if not self.objects:
            raise ValueError("objects: expected at least one object model")
        self.width, self.height, self.near, self.far = int(width), int(height), float(near), float(far)
        self._impl = None
        if backend in ("auto", "egl"):
            try:
                self._impl = _ModernGLBackend(self.objects, self.width, self.height, self.near, self.far)
            except Exception as exc:  # no EGL display, no libEGL, no GL 3.3: all end here
                if backend == "egl":
                    raise RuntimeError(f"EGL rendering is not available ({exc}); install libegl1 and "
                                       "libgl1-mesa-dri, or use backend='tiny'") from exc
                logger.warning("EGL rendering not available (%s); falling back to pybullet's TinyRenderer "
                               "(about 50x slower)", exc)
        if self._impl is None:
            self._impl = TinyRendererBackend(self.objects, self.width, self.height, self.near, self.far)
        self.backend = "egl" if isinstance(self._impl, _ModernGLBackend) else "tiny"

    def _poses(self, poses) -> list[tuple[int, np.ndarray, np.ndarray]]:
        checked = []
        for i, pose in enumerate(poses):
            try:
                obj_id, R, t = pose
            except (TypeError, ValueError) as exc:
                raise ValueError(f"poses[{i}]: expected (obj_id, R (3, 3), t (3,) metres)") from exc
            if int(obj_id) not in self.objects:
                raise ValueError(f"poses[{i}]: obj_id {obj_id} is not one of the renderer's objects "
                                 f"{sorted(self.objects)}")
            checked.append((int(obj_id), *_check_pose(R, t, f"poses[{i}]")))
        return checked

    def render(
        self,
        K,
        poses: Sequence,
        lighting: Lighting = Lighting(),
        full_masks: bool | Sequence[bool] = True,
    ) -> RenderOutput:
        """Return the :class:`RenderOutput` of ``poses`` [(obj_id, R (3, 3), t (3,) m), ...] seen with ``K``.

        A full silhouette costs one extra pass per instance: ``full_masks=False`` skips them
        (masks_full is then empty); a sequence of bools, one per pose, skips some (their
        masks_full entry is then the visible mask, e.g. for a tray nobody annotates).
        """
        K = check_intrinsics(K)
        poses = self._poses(poses)
        if isinstance(full_masks, bool):
            wanted = [full_masks] * len(poses) if full_masks else None
        else:
            wanted = [bool(w) for w in full_masks]
            if len(wanted) != len(poses):
                raise ValueError(f"full_masks: expected one bool per pose ({len(poses)}), got {len(wanted)}")
        return self._impl.render(K, poses, lighting, wanted)

    def render_depth(self, obj_id: int, R, t, K) -> np.ndarray:
        """Return the (H, W) float32 depth in metres (0 = nothing) of one object at pose R, t."""
        return self.render(K, [(obj_id, R, t)], full_masks=False).depth

    def release(self) -> None:
        """Free the GL context (or pybullet client); the renderer cannot be used afterwards."""
        self._impl.release()

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class _ModernGLBackend:
    """moderngl on a standalone EGL context: one vertex array per object, three render targets."""

    def __init__(self, objects: dict, width: int, height: int, near: float, far: float):
        import moderngl

        self.width, self.height, self.near, self.far = width, height, near, far
        self.ctx = moderngl.create_standalone_context(backend="egl")
        try:
            self.program = self.ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
            self.targets = [
                self.ctx.texture((width, height), 4, dtype="f1"),
                self.ctx.texture((width, height), 1, dtype="f4"),
                self.ctx.texture((width, height), 1, dtype="f4"),
            ]
            self.fbo = self.ctx.framebuffer(color_attachments=self.targets,
                                            depth_attachment=self.ctx.depth_renderbuffer((width, height)))
            white = self.ctx.texture((1, 1), 3, data=bytes([255, 255, 255]))
            self.meshes = {}
            self.corners = {obj_id: box_corners_3d(obj.points) for obj_id, obj in objects.items()}
            for obj_id, obj in objects.items():
                vertices, faces, image = _mesh_arrays(obj)
                if image is not None:
                    texture = self.ctx.texture((image.shape[1], image.shape[0]), 3,
                                               data=np.ascontiguousarray(image).tobytes(), alignment=1)
                    texture.build_mipmaps()
                    texture.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
                else:
                    texture = white
                vao = self.ctx.vertex_array(
                    self.program,
                    [(self.ctx.buffer(vertices.tobytes()), "3f 3f 2f 3f",
                      "in_position", "in_normal", "in_uv", "in_colour")],
                    index_buffer=self.ctx.buffer(faces.tobytes()),
                )
                self.meshes[obj_id] = (vao, texture)
        except Exception:
            self.ctx.release()
            raise

    def _draw(self, poses, instance_ids, lighting: Lighting, viewport=None) -> None:
        self.fbo.use()
        self.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=viewport)
        self.ctx.enable(self.ctx.DEPTH_TEST)
        self.ctx.disable(self.ctx.CULL_FACE)
        self.program["light_direction"].value = tuple(float(v) for v in lighting.direction)
        self.program["light"].value = (lighting.ambient, lighting.diffuse, lighting.specular,
                                       lighting.shininess)
        for (obj_id, R, t), instance in zip(poses, instance_ids):
            vao, texture = self.meshes[obj_id]
            texture.use(0)
            self.program["R"].write(R.T.astype("f4").tobytes())  # GLSL matrices are column-major
            self.program["t"].value = tuple(float(v) for v in t)
            self.program["instance"].value = float(instance)
            vao.render()

    def _read(self, attachment: int, components: int, dtype: str, box=None) -> np.ndarray:
        """Return an attachment as (rows, cols, components), OpenCV row order; ``box`` = (x, y, w, h) px."""
        x, y, w, h = box if box is not None else (0, 0, self.width, self.height)
        raw = self.fbo.read(viewport=(x, self.height - y - h, w, h), components=components,
                            attachment=attachment, dtype=dtype)
        array = np.frombuffer(raw, dtype=np.uint8 if dtype == "f1" else np.float32)
        return array.reshape(h, w, components)[::-1]

    def _silhouette_box(self, K, obj_id: int, R, t) -> tuple | None:
        """Return the (x, y, w, h) pixel box holding the object's projection, or None if it may not fit."""
        corners = self.corners[obj_id] @ R.T + t
        if np.any(corners[:, 2] <= self.near):
            return None
        uv = corners[:, :2] / corners[:, 2:] * K[[0, 1], [0, 1]] + K[:2, 2]
        x0, y0 = np.clip(np.floor(uv.min(axis=0)) - 2, 0, [self.width, self.height]).astype(int)
        x1, y1 = np.clip(np.ceil(uv.max(axis=0)) + 3, 0, [self.width, self.height]).astype(int)
        if x1 <= x0 or y1 <= y0:
            return (0, 0, 0, 0)
        return (int(x0), int(y0), int(x1 - x0), int(y1 - y0))

    def render(self, K, poses, lighting: Lighting, full_masks: list | None) -> RenderOutput:
        # Made current for the call: the last EGL context created in a process is the current one,
        # so a second renderer (the refiner's beside the depth refiner's) would take the draws.
        with self.ctx:
            return self._render(K, poses, lighting, full_masks)

    def _render(self, K, poses, lighting: Lighting, full_masks: list | None) -> RenderOutput:
        self.program["P"].write(projection_matrix(K, self.width, self.height, self.near, self.far)
                                .T.astype("f4").tobytes())
        self.fbo.scissor = None
        self._draw(poses, range(1, len(poses) + 1), lighting)
        rgb = np.ascontiguousarray(self._read(0, 3, "f1"))
        depth = np.ascontiguousarray(self._read(1, 1, "f4")[..., 0])
        instances = self._read(2, 1, "f4")[..., 0]
        masks_visib = [instances == i for i in range(1, len(poses) + 1)]
        masks_full = []
        if full_masks is not None and len(poses) == 1:
            masks_full = [masks_visib[0].copy()]  # alone already
        elif full_masks is not None:
            # One pass per instance, drawn and read only inside its projected bounding box.
            for pose, visib, wanted in zip(poses, masks_visib, full_masks):
                box = self._silhouette_box(K, *pose)
                full = visib.copy()
                if wanted and (box is None or box[2] * box[3] > 0):
                    x, y, w, h = box if box is not None else (0, 0, self.width, self.height)
                    self.fbo.scissor = (x, self.height - y - h, w, h)
                    self._draw([pose], [1], lighting, viewport=self.fbo.scissor)
                    full[y:y + h, x:x + w] |= self._read(2, 1, "f4", (x, y, w, h))[..., 0] == 1
                masks_full.append(full)
            self.fbo.scissor = None
        return RenderOutput(rgb=rgb, depth=depth, masks_visib=masks_visib, masks_full=masks_full)

    def release(self) -> None:
        self.ctx.release()


class TinyRendererBackend:
    """pybullet's software TinyRenderer (no GL): visual shapes from the models, depth linearised.

    Per-vertex colours are averaged into one colour per object (pybullet colours whole
    shapes), textures are kept. Same outputs as the EGL backend, about 50x slower.
    """

    def __init__(self, objects: dict, width: int, height: int, near: float, far: float):
        import tempfile

        import pybullet
        from PIL import Image

        self.pb = pybullet
        self.width, self.height, self.near, self.far = width, height, near, far
        self.client = pybullet.connect(pybullet.DIRECT)
        self.shapes = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="hrpose-tiny-")
        for obj_id, obj in objects.items():
            vertices, faces, image = _mesh_arrays(obj)
            kwargs = {}
            if image is None:
                kwargs["rgbaColor"] = [*vertices[:, 8:11].mean(axis=0).tolist(), 1.0]
            shape = pybullet.createVisualShape(
                pybullet.GEOM_MESH, vertices=vertices[:, :3].astype(np.float64).tolist(),
                indices=faces.ravel().tolist(), normals=vertices[:, 3:6].astype(np.float64).tolist(),
                uvs=vertices[:, 6:8].astype(np.float64).tolist(), physicsClientId=self.client, **kwargs)
            texture = None
            if image is not None:
                path = f"{self._tmp.name}/{obj_id}.png"
                Image.fromarray(image).save(path)
                texture = pybullet.loadTexture(path, physicsClientId=self.client)
            self.shapes[obj_id] = (shape, texture)
        self.bodies: list[int] = []

    def _place(self, poses) -> list[int]:
        pb = self.pb
        for body in self.bodies:
            pb.removeBody(body, physicsClientId=self.client)
        self.bodies = []
        for obj_id, R, t in poses:
            shape, texture = self.shapes[obj_id]
            q = quaternion_from_matrix(R)  # x, y, z, w: PyBullet's order
            body = pb.createMultiBody(baseVisualShapeIndex=shape, basePosition=t.tolist(),
                                      baseOrientation=q.tolist(), physicsClientId=self.client)
            if texture is not None:
                pb.changeVisualShape(body, -1, textureUniqueId=texture, physicsClientId=self.client)
            self.bodies.append(body)
        return self.bodies

    def _snapshot(self, K, lighting: Lighting):
        pb = self.pb
        # Camera at the origin looking down +z with y down (OpenCV): GL view flips y and z.
        view = np.diag([1.0, -1.0, -1.0, 1.0])
        # TinyRenderer samples pixels half a pixel off GL's centres (measured: +0.5 px in x,
        # -0.5 px in y against the EGL backend); moving the principal point cancels it.
        K = K + np.array([[0.0, 0.0, -0.5], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
        P = projection_matrix(K, self.width, self.height, self.near, self.far)
        P = P @ np.diag([1.0, -1.0, -1.0, 1.0])  # undo the view flip: P sees OpenCV camera points
        direction = -np.asarray(lighting.direction, dtype=np.float64)
        _, _, rgba, buffer, segmentation = pb.getCameraImage(
            self.width, self.height, viewMatrix=view.T.ravel().tolist(),
            projectionMatrix=P.T.ravel().tolist(), renderer=pb.ER_TINY_RENDERER, shadow=0,
            lightDirection=(direction * 10).tolist(), lightAmbientCoeff=lighting.ambient,
            lightDiffuseCoeff=lighting.diffuse, lightSpecularCoeff=lighting.specular,
            physicsClientId=self.client)
        rgba = np.asarray(rgba, dtype=np.uint8).reshape(self.height, self.width, 4)
        buffer = np.asarray(buffer, dtype=np.float64).reshape(self.height, self.width)
        segmentation = np.asarray(segmentation).reshape(self.height, self.width)
        # pybullet's depth buffer d in [0, 1] is nonlinear: z = f n / (f - (f - n) d).
        ndc = 2.0 * buffer - 1.0
        z = 2.0 * self.far * self.near / (self.far + self.near - ndc * (self.far - self.near))
        return rgba[..., :3], z, segmentation

    def render(self, K, poses, lighting: Lighting, full_masks: list | None) -> RenderOutput:
        bodies = self._place(poses)
        rgb, z, segmentation = self._snapshot(K, lighting)
        hit = segmentation >= 0
        depth = np.where(hit, z, 0.0).astype(np.float32)
        rgb = np.where(hit[..., None], rgb, 0).astype(np.uint8)
        masks_visib = [segmentation == body for body in bodies]
        masks_full = []
        if full_masks is not None:
            for pose, visib, wanted in zip(poses, masks_visib, full_masks):
                if not wanted:
                    masks_full.append(visib.copy())
                    continue
                (body,) = self._place([pose])
                masks_full.append((self._snapshot(K, lighting)[2] == body) | visib)
            self._place(poses)
        return RenderOutput(rgb=np.ascontiguousarray(rgb), depth=depth, masks_visib=masks_visib,
                            masks_full=masks_full)

    def release(self) -> None:
        self.pb.disconnect(physicsClientId=self.client)
        self._tmp.cleanup()
