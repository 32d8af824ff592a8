"""Replay evaluation report: tables, recall curves, latency plots, overlay video and strip.

Everything is drawn from an :class:`hrpose_ros.scoring.EvalResult`: the numbers in the
tables are the ones in metrics.json, formatted. Plots use matplotlib's Agg backend (no
display needed); the HTML report embeds its images, so it is one self-contained file,
and report.md links the PNG files beside it. The overlay video is MPEG-4 Part 2 (mp4v,
what OpenCV's bundled FFmpeg writes; VLC/ffplay play it), and overlay_strip.png shows a
few frames for viewers without a video player.
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import matplotlib
import numpy as np

from hrpose_ros.geometry import box_corners_3d, project
from hrpose_ros.metrics import recall_curve
from hrpose_ros.types import ObjectModel, ObjectPose
from hrpose_ros.visualization import colour_for, draw_box_3d, draw_label

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

if TYPE_CHECKING:
    from hrpose_ros.scoring import EvalResult, FrameResult

__all__ = [
    "OverlayWriter",
    "latency_figure",
    "recall_curves",
    "recall_figure",
    "summary_text",
    "write_report",
]

_log = logging.getLogger(__name__)

GT_COLOUR = (0, 200, 0)  # RGB: ground truth boxes green, estimates in their object's colour

# Threshold grids of the recall curves: ADD(-S) in fractions of the diameter, 2D projection in
# pixels, and n for "n cm, n degrees".
ADD_GRID = np.linspace(0.0, 0.3, 61)
PROJ2D_GRID = np.linspace(0.0, 30.0, 61)
CM_DEG_GRID = np.linspace(0.0, 15.0, 61)


def object_colour(obj_id: int) -> tuple[int, int, int]:
    """Return the RGB colour of ``obj_id`` in overlays and plots (the node's overlay colours)."""
    return tuple(int(c) for c in colour_for(obj_id))


# --- overlay ----------------------------------------------------------------------------------


def draw_frame(image: np.ndarray, frame: FrameResult, objects: dict[int, ObjectModel]) -> np.ndarray:
    """Return a copy of ``image`` (H, W, 3) RGB with ground-truth (green) and estimated 3D boxes drawn."""
    canvas = np.ascontiguousarray(image).copy()
    K, dist = frame.camera.K, frame.camera.dist

    def corners(pose: ObjectPose) -> np.ndarray:
        return project(box_corners_3d(objects[pose.obj_id].points), pose.R, pose.t, K, dist)

    for gt in frame.ground_truth or ():
        if gt.obj_id in objects and gt.t[2] > 0:
            draw_box_3d(canvas, corners(gt), GT_COLOUR, thickness=1)
    for est in frame.estimates:
        if est.obj_id in objects and est.t[2] > 0:
            c = corners(est)
            draw_box_3d(canvas, c, object_colour(est.obj_id), thickness=2)
            top_left = c.min(axis=0) - (0.0, 18.0)  # the label sits above the box
            draw_label(canvas, f"{est.class_name} {est.score:.2f}", top_left, object_colour(est.obj_id))
    ms = 1000.0 * frame.timings.get("total", 0.0)
    draw_label(canvas, f"#{frame.im_id}  {ms:.0f} ms  green: ground truth", (4, 4), (255, 255, 255))
    return canvas


class OverlayWriter:
    """Writes overlay.mp4 frame by frame and keeps a few thumbnails for overlay_strip.png.

    Memory stays bounded on long bags: thumbnails are thinned to every other one whenever
    more than ``2 * strip_frames * 2`` are held.
    """

    def __init__(
        self,
        out_dir: Path | str,
        objects: dict[int, ObjectModel],
        video: bool = True,
        fps: float = 10.0,
        strip_frames: int = 6,
        thumb_width: int = 320,
    ):
        self.out_dir = Path(out_dir)
        self.objects = objects
        self.video = video
        self.fps = fps
        self.strip_frames = strip_frames
        self.thumb_width = thumb_width
        self.outputs: dict[str, str] = {}
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self._thumbs: list[tuple[int, np.ndarray]] = []
        self._stride = 1
        self._count = 0

    def add(self, image: np.ndarray, frame: FrameResult) -> None:
        """Draw one frame's boxes and append it to the video and the thumbnail pool."""
        canvas = draw_frame(image, frame, self.objects)
        h, w = canvas.shape[:2]
        if self.video:
            if self._writer is None:
                path = self.out_dir / "overlay.mp4"
                self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
                if not self._writer.isOpened():
                    _log.warning("OpenCV cannot write %s (no mp4v encoder); writing the strip only", path)
                    self.video = False
                else:
                    self._size = (w, h)
                    self.outputs["overlay_video"] = str(path)
            if self.video:
                if (w, h) != self._size:  # a video has one size: later frames are fitted to it
                    canvas_v = cv2.resize(canvas, self._size, interpolation=cv2.INTER_AREA)
                else:
                    canvas_v = canvas
                self._writer.write(cv2.cvtColor(canvas_v, cv2.COLOR_RGB2BGR))
        if self._count % self._stride == 0:
            scale = self.thumb_width / w
            thumb = cv2.resize(
                canvas, (self.thumb_width, max(1, round(h * scale))), interpolation=cv2.INTER_AREA
            )
            self._thumbs.append((self._count, thumb))
            if len(self._thumbs) > 4 * self.strip_frames:
                self._thumbs = self._thumbs[::2]
                self._stride *= 2
        self._count += 1

    def close(self) -> None:
        """Finish the video and write overlay_strip.png (evenly spaced frames, 3 per row)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if not self._thumbs:
            return
        picks = np.unique(
            np.linspace(0, len(self._thumbs) - 1, min(self.strip_frames, len(self._thumbs))).round()
        )
        thumbs = [self._thumbs[int(i)][1] for i in picks]
        th = max(t.shape[0] for t in thumbs)
        thumbs = [np.pad(t, ((0, th - t.shape[0]), (0, 0), (0, 0))) for t in thumbs]
        cols = min(3, len(thumbs))
        while len(thumbs) % cols:
            thumbs.append(np.zeros_like(thumbs[0]))
        rows = [np.concatenate(thumbs[i : i + cols], axis=1) for i in range(0, len(thumbs), cols)]
        path = self.out_dir / "overlay_strip.png"
        cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
        self.outputs["overlay_strip"] = str(path)


# --- plots ------------------------------------------------------------------------------------


def recall_curves(result: EvalResult) -> dict[str, dict[int, np.ndarray]]:
    """Return {metric: {obj_id: recall at each threshold of the metric's grid}}; obj_id 0 = mean over objects.

    Metrics: "add" (ADD(-S) below grid x diameter), "proj2d" (below grid px),
    "cm_deg" (below grid cm and grid degrees).
    """
    curves: dict[str, dict[int, np.ndarray]] = {"add": {}, "proj2d": {}, "cm_deg": {}}
    for obj_id in sorted({s.obj_id for s in result.scores}):
        own = [s for s in result.scores if s.obj_id == obj_id]
        diameter = result.objects[obj_id].diameter
        curves["add"][obj_id] = recall_curve([s.add_error / diameter for s in own], ADD_GRID)
        curves["proj2d"][obj_id] = recall_curve([s.proj2d_error for s in own], PROJ2D_GRID)
        # n cm and n deg together: the larger of the translation (cm) and rotation (deg) errors below n
        curves["cm_deg"][obj_id] = recall_curve(
            [max(100.0 * s.translation_error, s.rotation_error_deg) for s in own], CM_DEG_GRID
        )
    for per_object in curves.values():
        if per_object:
            per_object[0] = np.mean(list(per_object.values()), axis=0)
    return curves


def recall_figure(result: EvalResult, path: Path | str) -> Path:
    """Write the recall curves (3 panels: ADD(-S), 2D projection, n cm n deg) to ``path`` (PNG); return it."""
    curves = recall_curves(result)
    th = result.thresholds
    panels = [
        ("add", ADD_GRID, "ADD(-S) threshold (fraction of diameter)", th.add_diameter_fraction),
        ("proj2d", PROJ2D_GRID, "2D projection threshold (px)", th.proj2d_px),
        ("cm_deg", CM_DEG_GRID, "n for n cm, n deg", th.translation_m * 100.0),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    for ax, (key, grid, label, default) in zip(axes, panels):
        for obj_id, recall in curves[key].items():
            if obj_id == 0:
                ax.plot(grid, recall, color="black", linewidth=2.5, label="mean")
            else:
                name = result.objects[obj_id].name
                ax.plot(
                    grid, recall, color=np.array(object_colour(obj_id)) / 255.0, linewidth=1.2, label=name
                )
        ax.axvline(default, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(label)
        ax.set_ylim(0, 1.02)
        ax.set_xlim(grid[0], grid[-1])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall")
    if curves["add"]:
        axes[-1].legend(loc="lower right", fontsize=8)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def latency_figure(result: EvalResult, path: Path | str) -> Path:
    """Write per-frame total latency and per-stage box plots (ms) to ``path`` (PNG); return it."""
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
    totals = [1000.0 * f.timings.get("total", 0.0) for f in result.frames]
    ax_t.plot([f.im_id for f in result.frames], totals, color="tab:blue", linewidth=1)
    ax_t.set_xlabel("image (bag order)")
    ax_t.set_ylabel("latency per image (ms)")
    ax_t.set_title(f"{result.fps:.1f} fps (1 / mean latency)")
    ax_t.grid(alpha=0.3)
    stages = [s for s in result.latency if s != "total"] + (["total"] if "total" in result.latency else [])
    data = [[1000.0 * f.timings[s] for f in result.frames if s in f.timings] for s in stages]
    if stages:
        ax_s.boxplot(data, tick_labels=stages, orientation="horizontal", showfliers=True)
    ax_s.set_xlabel("ms")
    ax_s.set_title("per stage")
    ax_s.grid(alpha=0.3)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- text -------------------------------------------------------------------------------------


def _percent(value: float) -> str:
    return f"{100.0 * value:.1f} %"


def accuracy_rows(result: EvalResult) -> tuple[list[str], list[list[str]]]:
    """Return (header, rows) of the accuracy table, numbers formatted from ``result.summary``."""
    th = result.thresholds
    header = [
        "object",
        "id",
        "instances",
        "found",
        "false pos.",
        f"ADD(-S) < {th.add_diameter_fraction:g} d",
        f"2D proj. < {th.proj2d_px:g} px",
        f"{th.translation_m * 100:g} cm {th.rotation_deg:g} deg",
    ]
    rows = []
    for s in result.summary:
        name = s.name + (" (sym.)" if s.symmetric else "")
        rows.append(
            [
                name,
                str(s.obj_id) if s.obj_id else "",
                str(s.instances),
                str(s.found),
                str(s.false_positives),
                _percent(s.add_recall),
                _percent(s.proj2d_recall),
                _percent(s.cm_deg_recall),
            ]
        )
    return header, rows


def latency_rows(result: EvalResult) -> tuple[list[str], list[list[str]]]:
    """Return (header, rows) of the latency table in milliseconds."""
    header = ["stage", "mean ms", "median ms", "p90 ms", "max ms"]
    order = [s for s in result.latency if s != "total"] + (["total"] if "total" in result.latency else [])
    rows = [
        [s] + [f"{result.latency[s][k]:.1f}" for k in ("mean_ms", "median_ms", "p90_ms", "max_ms")]
        for s in order
    ]
    return header, rows


def rgbd_rows(result: EvalResult) -> tuple[list[str], list[list[str]]]:
    """Return (header, rows) of RGB-only beside RGB-D recalls per object (no rows for an RGB replay)."""
    th = result.thresholds
    cm_deg = f"{th.translation_m * 100:g} cm {th.rotation_deg:g} deg"
    header = ["object", "ADD(-S) RGB", "ADD(-S) RGB-D", f"{cm_deg} RGB", f"{cm_deg} RGB-D"]
    rows = [[rgbd.name, _percent(rgb.add_recall), _percent(rgbd.add_recall), _percent(rgb.cm_deg_recall),
             _percent(rgbd.cm_deg_recall)] for rgb, rgbd in zip(result.rgb_summary, result.summary)]
    return header, rows


def _rgbd_note(result: EvalResult) -> str:
    refine = result.latency.get("depth refinement")
    per_frame = f"; depth refinement {refine['mean_ms']:.1f} ms mean per frame" if refine else ""
    return f"The same network run before (RGB) and after depth refinement (RGB-D){per_frame}."


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join(fmt(r) for r in [header, *rows])


def summary_text(result: EvalResult) -> str:
    """Return the plain-text summary the CLI prints: accuracy table, latency, fps, output paths."""
    lines = [f"replay of {result.bag}: {len(result.frames)} frames through the {result.mode}"]
    if result.error:
        lines.append(f"INCOMPLETE: {result.error}")
    if result.summary:
        lines += ["", _text_table(*accuracy_rows(result))]
    else:
        lines.append("no ground truth scored")
    if result.rgb_summary:
        lines += ["", "RGB-only vs RGB-D:", _text_table(*rgbd_rows(result)), _rgbd_note(result)]
    total = result.latency.get("total")
    if total:
        stages = ", ".join(f"{s} {v['mean_ms']:.1f}" for s, v in result.latency.items() if s != "total")
        lines += [
            "",
            f"latency: {total['mean_ms']:.1f} ms mean per image ({stages} ms) -> {result.fps:.1f} fps",
        ]
    out = result.outputs
    lines.append("")
    for key, label in (
        ("report_html", "report"),
        ("report_md", "report (Markdown)"),
        ("overlay_video", "overlay"),
        ("overlay_strip", "overlay strip"),
        ("results", "BOP results"),
        ("metrics", "metrics"),
    ):
        if key in out:
            lines.append(f"{label + ':':<20}{out[key]}")
    return "\n".join(lines)


def _intro(result: EvalResult) -> list[str]:
    th = result.thresholds
    status = "complete" if result.complete else f"**incomplete**: {result.error}"
    return [
        f"Bag: `{result.bag}`; {len(result.frames)} images through the {result.mode}; run {status}.",
        "",
        "Every image of the bag is processed once, in order (one untimed warm-up call first). Per image "
        "and object, estimates in descending score each take the unmatched ground-truth instance with the "
        "smallest ADD(-S) error; unmatched ground truth is a miss, unmatched estimates are false positives. "
        f"Correct: ADD(-S) below {th.add_diameter_fraction:g} of the object diameter (ADD-S for symmetric "
        "objects), "
        f"mean 2D projection error below {th.proj2d_px:g} px, rotation below {th.rotation_deg:g} deg and "
        f"translation below {100 * th.translation_m:g} cm. The mean row averages the objects' recalls.",
    ]


def _files_list(result: EvalResult) -> list[tuple[str, str]]:
    names = {
        "results": "BOP results CSV (t in mm)",
        "scores": "errors per ground-truth instance",
        "metrics": "all numbers (JSON)",
        "overlay_video": "overlay video (mp4v)",
    }
    return [(Path(p).name, names[k]) for k, p in result.outputs.items() if k in names] + [
        ("metrics.json", names["metrics"])
    ]


def _markdown(result: EvalResult, images: dict[str, Path]) -> str:
    parts = [
        "# HRPose replay evaluation",
        "",
        *_intro(result),
        "",
        "## Accuracy",
        "",
        _markdown_table(*accuracy_rows(result)) if result.summary else "No ground truth was scored.",
        "",
    ]
    if result.rgb_summary:
        parts += ["## RGB-only vs RGB-D", "", _markdown_table(*rgbd_rows(result)), "", _rgbd_note(result), ""]
    if "recall" in images:
        parts += [f"![recall curves]({images['recall'].name})", ""]
    parts += ["## Latency", ""]
    if result.latency:
        parts += [
            _markdown_table(*latency_rows(result)),
            "",
            f"**{result.fps:.1f} fps** (1 / mean latency).",
            "",
        ]
    if "latency" in images:
        parts += [f"![latency]({images['latency'].name})", ""]
    parts += ["## Overlay", ""]
    if "strip" in images:
        parts += [f"![overlay strip]({images['strip'].name})", ""]
    if "overlay_video" in result.outputs:
        parts += [
            f"Video: [{Path(result.outputs['overlay_video']).name}]"
            f"({Path(result.outputs['overlay_video']).name}); ground truth green, estimates coloured.",
            "",
        ]
    parts += ["## Files", ""] + [f"- [{name}]({name}): {what}" for name, what in _files_list(result)]
    return "\n".join(parts) + "\n"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _html(result: EvalResult, images: dict[str, Path]) -> str:
    intro = "".join(f"<p>{html.escape(p).replace('`', '')}</p>" for p in _intro(result) if p)
    parts = [
        "<h1>HRPose replay evaluation</h1>",
        intro,
        "<h2>Accuracy</h2>",
        _html_table(*accuracy_rows(result)) if result.summary else "<p>No ground truth was scored.</p>",
    ]
    if result.rgb_summary:
        parts += ["<h2>RGB-only vs RGB-D</h2>", _html_table(*rgbd_rows(result)),
                  f"<p>{html.escape(_rgbd_note(result))}</p>"]
    if "recall" in images:
        parts.append(_html_image(images["recall"], "recall curves"))
    parts.append("<h2>Latency</h2>")
    if result.latency:
        parts += [
            _html_table(*latency_rows(result)),
            f"<p><b>{result.fps:.1f} fps</b> (1 / mean latency).</p>",
        ]
    if "latency" in images:
        parts.append(_html_image(images["latency"], "latency"))
    parts.append("<h2>Overlay</h2>")
    if "strip" in images:
        parts.append(_html_image(images["strip"], "overlay strip"))
    if "overlay_video" in result.outputs:
        name = html.escape(Path(result.outputs["overlay_video"]).name)
        parts.append(f'<p>Video: <a href="{name}">{name}</a> (ground truth green, estimates coloured).</p>')
    parts.append(
        "<h2>Files</h2><ul>"
        + "".join(
            f'<li><a href="{html.escape(n)}">{html.escape(n)}</a>: {html.escape(w)}</li>'
            for n, w in _files_list(result)
        )
        + "</ul>"
    )
    style = (
        "body{font-family:sans-serif;max-width:1300px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>HRPose replay evaluation</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def write_report(out_dir: Path | str, result: EvalResult) -> dict[str, str]:
    """Return {name: path} of the plots and reports written to ``out_dir`` for ``result``.

    Writes recall_curves.png, latency.png (when there are frames), report.md and
    report.html (images embedded).
    """
    out = Path(out_dir)
    images: dict[str, Path] = {}
    outputs: dict[str, str] = {}
    if result.scores:
        images["recall"] = recall_figure(result, out / "recall_curves.png")
        outputs["recall_curves"] = str(images["recall"])
    if result.frames:
        images["latency"] = latency_figure(result, out / "latency.png")
        outputs["latency_plot"] = str(images["latency"])
    if "overlay_strip" in result.outputs:
        images["strip"] = Path(result.outputs["overlay_strip"])
    (out / "report.md").write_text(_markdown(result, images))
    (out / "report.html").write_text(_html(result, images))
    outputs["report_md"] = str(out / "report.md")
    outputs["report_html"] = str(out / "report.html")
    return outputs
