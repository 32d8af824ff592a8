"""int8 of the crop estimator's networks (training/quantize_crops.py) on a toy split, tiny networks."""

import json

import numpy as np
import onnx
import onnxruntime as ort

from hrpose_ros.crop_pipeline import CropPosePipeline, export_crops_onnx
from training import quantize_crops
from training.toy_data import write_tiny_crops_file, write_toy_split


def test_both_networks_are_quantised_calibrated_on_crops_and_scored_beside_fp32(tmp_path):
    objects = write_toy_split(tmp_path / "split", n_frames=3, seed=5)
    weights = write_tiny_crops_file(tmp_path / "crops.pt", objects)
    out = tmp_path / "out"
    assert quantize_crops.main(["--weights", str(weights), "--calib", str(tmp_path / "split"), "--val",
                                str(tmp_path / "split"), "--frames", "2", "--out", str(out)]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics)[-4:] == ["fp32", "int8 detector", "int8 keypoints", "int8 both"]
    assert metrics["fp32"]["drop_points"] == 0.0 and metrics["fp32"]["keeps_accuracy"]
    assert "| int8 both |" in (out / "report.md").read_text()

    # each int8 file is a QDQ graph that runs on what the pipeline feeds the fp32 one, same output shapes
    pipeline = CropPosePipeline.from_pretrained(weights, backend="onnxruntime", device="cpu")
    det_inputs, kp_inputs = quantize_crops.calibration_inputs(pipeline, tmp_path / "split", 2)
    assert kp_inputs[0].shape[1:] == (3, 64, 64)
    for fp32_path, name, batch in zip(export_crops_onnx(weights), ("detector", "keypoints"),
                                      (det_inputs[0], kp_inputs[0])):
        int8_path = out / f"{name}.int8.onnx"
        assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(int8_path)).graph.node)
        fp32_out = ort.InferenceSession(str(fp32_path)).run(None, {"image": batch})
        int8_out = ort.InferenceSession(str(int8_path)).run(None, {"image": batch})
        assert [o.shape for o in int8_out] == [o.shape for o in fp32_out]
        assert all(np.isfinite(o).all() for o in int8_out)
