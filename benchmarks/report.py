"""The run's statistics, printed report, plot and files (benchmark.json, stages.csv, report.txt, .png)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.goals import Goals
from benchmarks.stage_timing import STAGES
from benchmarks.timing import Stats


def summarize(raw: dict) -> dict:
    """Return the statistics (Stats per sample list, rates, shares) of the raw measurements."""
    stages = {b: {s: Stats.of(v) for s, v in st.items()} for b, st in raw["samples"].items()}
    inference = {b: stages[b]["inference"].median_ms / 1e3 for b in stages}
    nodes = []
    for n in raw["nodes"]:
        entry = {k: v for k, v in n.items() if k not in ("closed_loop", "open_loop")}
        if n.get("closed_loop"):
            entry["closed_loop"] = Stats.of(n["closed_loop"])
        if n.get("open_loop"):
            entry["open_loop"] = {k: v for k, v in n["open_loop"].items() if k != "latency"}
            entry["open_loop"]["latency"] = Stats.of(n["open_loop"]["latency"])
        nodes.append(entry)
    return {
        "stages": stages,
        "inference_s": inference,
        "gflops": {
            "network": {b: raw["flops"] / t / 1e9 for b, t in inference.items()},
            **raw["matmul"],
        },
        "poses_found": {b: float(np.median(v)) for b, v in raw["found"].items()},
        "instances": {
            str(c): {k: Stats.of(v[k]) for k in ("decode", "pnp", "total")} | {"found": v["found"]}
            for c, v in raw["instances"].items()
        },
        "input_sizes": {size: {k: Stats.of(v) for k, v in row.items()} for size, row in raw["sizes"].items()},
        "nodes": nodes,
    }


def fmt_ms(value: float) -> str:
    return "-" if not np.isfinite(value) else (f"{value:.2f}" if value < 10 else f"{value:.1f}")


def table(header: Sequence[str], rows: Sequence[Sequence[str]], first_width: int = 26) -> str:
    """Return a plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(first_width, *(len(r[0]) for r in rows))] + [
        max(len(h), *(len(r[i]) for r in rows)) + 2 for i, h in enumerate(header) if i > 0
    ]
    lines = [header[0].ljust(widths[0]) + "".join(h.rjust(w) for h, w in zip(header[1:], widths[1:]))]
    lines.append("-" * sum(widths))
    for r in rows:
        lines.append(r[0].ljust(widths[0]) + "".join(c.rjust(w) for c, w in zip(r[1:], widths[1:])))
    return "\n".join(lines)


def format_report(results: dict, summary: dict, verdicts: Sequence[tuple[bool | None, str]]) -> str:
    """Return the printed report: set-up, the tables, memory, goals."""
    cpu, stages, gflops = results["cpu"], summary["stages"], summary["gflops"]
    lines = [
        results["title"],
        "",
        f"checkpoint: {results['checkpoint']}",
        f"weights: {results['weights_note']}",
    ]
    flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in cpu["flags"].items())
    lines.append(
        f"CPU flags: {flags} -> bf16 units: {'yes' if cpu['bf16_hardware'] else 'no'}, "
        f"AMX: {'yes' if cpu['amx'] else 'no'}"
    )
    lines.append(
        f"frames: {results['frames_note']}; load average at start {results['load_average']['start']:.2f}"
    )
    lines.append(
        f"threads: torch {results['threads']}, ONNX Runtime {results['threads']}; OMP_WAIT_POLICY="
        f"{results['omp_wait_policy'] or 'unset (OpenMP workers spin between layers)'}"
    )
    if results["load_average"]["start"] > 0.5 * (cpu["logical_cpus"] or 1):
        lines.append(
            f"WARNING: the machine was busy (load {results['load_average']['start']:.1f} on "
            f"{cpu['logical_cpus']} CPUs): engines using {results['threads']} threads lose most when other "
            "processes hold their cores (each layer ends in a barrier waiting for a descheduled thread); "
            "absolute times are pessimistic, ratios within this run still compare"
        )
    for b in results["backends"]:
        lines.append(f"  {b['label']:<15} {b['skipped'] or b['detail']}")
    lines += [f"  note: {note}" for note in results["notes"]]

    lines += [
        "",
        f"Per stage, ms median / p90 over {results['frames']} frames (in process, as pose_node does it):",
    ]
    names = list(stages)
    rows = [[s, *(str(stages[b][s]) for b in names)] for s in STAGES]
    rows.append(["frame total", *(str(stages[b]["frame"]) for b in names)])
    rows.append(["frames per second", *(f"{1e3 / stages[b]['frame'].median_ms:.1f}" for b in names)])
    if "torch fp32" in stages:
        base = summary["inference_s"]["torch fp32"]
        rows.append(["inference vs torch fp32", *(f"{base / summary['inference_s'][b]:.2f}x" for b in names)])
    rows.append(["achieved GFLOP/s", *(f"{gflops['network'][b]:.0f}" for b in names)])
    rows.append(["poses found per frame", *(f"{summary['poses_found'][b]:.0f}" for b in names)])
    lines.append(table(["stage", *names], rows))
    lines.append(
        f"network: {results['flops_per_frame'] / 1e9:.1f} GFLOP per frame (FlopCounterMode: 2 per "
        f"multiply-accumulate); 2048² matmul now: fp32 {gflops['matmul_fp32']:.0f} GFLOP/s, "
        f"bf16 {gflops['matmul_bf16']:.0f} GFLOP/s"
    )
    shares = [
        f"{b} {100 * gflops['network'][b] / gflops['matmul_bf16' if 'bf16' in b else 'matmul_fp32']:.0f} % "
        f"of the {'bf16' if 'bf16' in b else 'fp32'} matmul"
        for b in names
    ]
    lines.append("  network at " + ", ".join(shares) + " (int8: GOP/s vs the fp32 rate)")

    lines += [
        "",
        "Peaks + grouping and PnP vs instances (codec-encoded ground truth, 640x480), ms median / p90:",
    ]
    rows = [
        [f"{c} instances", str(v["decode"]), str(v["pnp"]), str(v["total"]), str(v["found"])]
        for c, v in summary["instances"].items()
    ]
    lines.append(table(["", "peaks + grouping", "PnP", "both", "poses found"], rows, 14))

    lines += ["", "Cost vs network input size, ms median / p90:"]
    sizes = summary["input_sizes"]
    names = list(next(iter(sizes.values())))
    lines.append(table(["input", *names], [[s, *(str(sizes[s][n]) for n in names)] for s in sizes], 10))

    lines += [
        "",
        "End to end through the live pose_node (image published -> PoseArray received; 'in node': the "
        "node's own received -> published mean from /diagnostics; DDS: Fast DDS builtin transports):",
    ]
    rows, failures = [], []
    for n in summary["nodes"]:
        closed, opened = n.get("closed_loop"), n.get("open_loop")
        internal = n.get("node_stage_means_ms", {})
        rows.append(
            [
                n["backend"],
                n["transport"],
                str(closed) if closed else "-",
                fmt_ms(internal.get("total", math.nan)),
                f"{1e3 / closed.median_ms:.1f}" if closed else "-",
                f"{opened['output_hz']:.1f} ({opened['answered']}/{opened['sent']})" if opened else "-",
                str(opened["latency"]) if opened else "-",
                f"{n['node_rss_mb']:.0f}" if n.get("node_rss_mb") else "-",
            ]
        )
        if n.get("error"):
            failures.append(f"  {n['backend']} ({n['transport']}) failed: {n['error'][:600]}")
    if rows:
        header = [
            "backend",
            "DDS",
            "latency ms med/p90",
            "in node ms",
            "fps 1/latency",
            "fps at 30 Hz (answered/sent)",
            "latency at 30 Hz",
            "node RSS MiB",
        ]
        lines.append(table(header, rows, 15))
        lines += failures
    else:
        lines.append("  not measured (--no-node)")
    missing = [b["label"] for b in results["backends"] if not b["skipped"] and not b["node_backend"]]
    if missing:
        lines.append(
            f"  not selectable in pose_node yet: {', '.join(missing)} (no such option in hrpose_ros.engines)"
        )

    memory = results["memory_mb"]
    per_engine = ", ".join(f"{k} +{v:.0f}" for k, v in memory["per_engine"].items())
    lines += [
        "",
        (
            f"Resident memory: this process {memory['after']:.0f} MiB with all engines loaded (before them "
            f"{memory['before_engines']:.0f} MiB, peak {memory['peak']:.0f} MiB; "
            f"per engine MiB: {per_engine})"
        ),
    ]
    lines += ["", "Goals (benchmarks/goals.yaml):"]
    for met, text in verdicts:
        lines.append(f"  [{'n/a   ' if met is None else ('MET   ' if met else 'MISSED')}] {text}")
    return "\n".join(lines)


def plot(results: dict, path: Path, goals: Goals) -> None:
    """Write the 2x2 figure: stages per backend, GFLOP/s vs matmul, instances, input sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    stages = results["stages"]
    labels = list(stages)
    ax = axes[0, 0]
    bottom = np.zeros(len(labels))
    for stage in STAGES:
        values = np.array([stages[b][stage]["median_ms"] for b in labels])
        ax.bar(labels, values, bottom=bottom, label=stage)
        bottom += values
    ax.set_ylabel("ms per 640x480 frame (median)")
    ax.set_title("Per stage, in process")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=8)

    ax = axes[0, 1]
    names = [*labels, "matmul fp32", "matmul bf16"]
    values = [results["gflops"]["network"].get(b, 0.0) for b in labels] + [
        results["gflops"]["matmul_fp32"],
        results["gflops"]["matmul_bf16"],
    ]
    colours = ["tab:blue"] * len(labels) + ["tab:gray"] * 2
    ax.bar(names, values, color=colours)
    ax.set_yscale("log")
    ax.set_ylabel("GFLOP/s (int8: GOP/s)")
    ax.set_title("Achieved network throughput vs 2048² matmul")
    ax.tick_params(axis="x", labelsize=8, rotation=20)

    ax = axes[1, 0]
    counts = sorted(int(k) for k in results["instances"])
    for key, label in (("decode", "peaks + grouping"), ("pnp", "PnP"), ("total", "both")):
        ax.plot(counts, [results["instances"][str(c)][key]["median_ms"] for c in counts], "o-", label=label)
    ax.axhline(goals.decode_pnp_ms, color="r", ls="--", lw=1, label=f"goal {goals.decode_pnp_ms:g} ms")
    ax.set_xlabel("instances in the frame")
    ax.set_ylabel("ms (median)")
    ax.set_title("Decode + PnP vs instances")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    sizes = list(results["input_sizes"])
    pixels = [int(s.split("x")[0]) * int(s.split("x")[1]) / 1e3 for s in sizes]
    for name in results["input_sizes"][sizes[0]]:
        ax.plot(pixels, [results["input_sizes"][s][name]["median_ms"] for s in sizes], "o-", label=name)
    ax.set_xlabel("network input (kilopixels): " + ", ".join(sizes))
    ax.set_ylabel("ms (median)")
    ax.set_yscale("log")
    ax.set_title("Cost vs input size")
    ax.legend(fontsize=8)
    fig.suptitle(results["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_jsonable(value):
    """Return ``value`` with dataclasses, numpy scalars/arrays and Paths turned into JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_outputs(out: Path, results: dict, report: str, goals: Goals) -> None:
    """Write benchmark.json, stages.csv, report.txt and benchmark.png to ``out``."""
    (out / "benchmark.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    (out / "report.txt").write_text(report + "\n")
    with open(out / "stages.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["backend", "stage", "median_ms", "p90_ms", "n"])
        for backend, stages in results["stages"].items():
            for stage, st in stages.items():
                writer.writerow([backend, stage, f"{st['median_ms']:.4f}", f"{st['p90_ms']:.4f}", st["n"]])
    plot(results, out / "benchmark.png", goals)
