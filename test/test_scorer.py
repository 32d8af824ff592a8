"""The pose scorer's training and multi-start tools (training/train_scorer.py, training/multistart.py)."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from hrpose_ros import bop_models, bop_reader
from hrpose_ros.refiner import RefinerNet, load_refiner, refiner_from_dict, refiner_to_dict
from training.multistart import turned_starts
from training.toy_data import write_toy_split
from training.train_refiner import Instances
from training.train_scorer import ScorerTrainConfig, auc, hypotheses, scored_refiner, scorer_net, train, turn


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorer")
    write_toy_split(root / "split", n_frames=6, seed=6)
    objects = bop_models.load_object_models(root / "models")
    refiner = root / "refiner.pt"
    torch.save(refiner_to_dict(RefinerNet(pretrained=False), "lite0", [o.obj_id for o in objects]), refiner)
    return root / "split", objects, refiner


def _angle(R0, R1) -> float:
    return float(np.rad2deg(np.linalg.norm(Rotation.from_matrix(R0.T @ R1).as_rotvec())))


def test_turned_starts_are_the_pose_first_then_its_turns_about_each_model_axis():
    R = Rotation.from_euler("xyz", (20, -40, 70), degrees=True).as_matrix()
    starts = turned_starts(R, (30.0, 90.0))
    assert starts.shape == (1 + 3 * 5, 3, 3)
    np.testing.assert_allclose(starts[0], R)
    angles = sorted(round(_angle(R, S)) for S in starts[1:])
    assert angles == [30] * 6 + [90] * 6 + [180] * 3
    for S in starts[1:]:  # about a model axis: that axis, seen from the camera, stays where it was
        assert any(np.allclose(S[:, k], R[:, k], atol=1e-9) for k in range(3))


def test_turns_are_about_a_model_axis_by_one_of_the_listed_angles():
    rng = np.random.default_rng(0)
    R = Rotation.from_euler("xyz", (10, 50, -30), degrees=True).as_matrix()
    for _ in range(20):
        T = turn(R, rng)
        assert round(_angle(R, T)) in (30, 60, 90, 180)
        assert any(np.allclose(T[:, k], R[:, k], atol=1e-9) for k in range(3))


def test_auc_ranks_right_hypotheses_above_wrong_ones():
    labels = np.array([1, 1, 0, 0, 0], bool)
    assert auc(np.array([3.0, 2.0, 1.0, 0.0, -1.0]), labels) == 1.0
    assert auc(np.array([-3.0, -2.0, 1.0, 0.0, 2.0]), labels) == 0.0
    assert auc(np.zeros(5), labels) == 0.5  # ties count half
    assert np.isnan(auc(np.arange(3.0), np.ones(3, bool)))


def test_hypotheses_turn_ground_truth_or_disturb_it(toy):
    split, objects, _ = toy
    data = Instances([split], objects, progress=False)
    indices = np.arange(len(data))

    def angles(turn_fraction: float) -> np.ndarray:
        config = ScorerTrainConfig((str(split),), str(split), "", starts_fraction=0.0,
                                   turn_fraction=turn_fraction)
        R, _ = hypotheses(data, indices, objects, np.random.default_rng(0), config)
        return np.array([_angle(data.R[i], R[n]) for n, i in enumerate(indices)])

    turned, disturbed = angles(1.0), angles(0.0)
    assert np.median(turned) > 45 and turned.min() > 10  # 30-180 deg, noise at half the 10 deg sigma
    assert np.median(disturbed) < 30


def test_the_scorer_starts_from_the_refiner_with_one_zero_logit(toy):
    _, _, refiner = toy
    model = scorer_net(torch.load(refiner, weights_only=False)).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 6, 128, 128))
    assert out.shape == (3, 1) and torch.all(out == 0)


def test_a_short_scorer_run_writes_its_logs_plot_and_a_loadable_checkpoint(toy, tmp_path):
    split, objects, refiner = toy
    config = ScorerTrainConfig(
        train=(str(split),), val=str(split), out=str(tmp_path / "s"), refiner=str(refiner),
        steps=4, batch=4, threads=2, val_every=2, val_samples=8, max_steps=1,
    )
    best = train(config, progress=False)
    out = tmp_path / "s"
    assert (out / "loss.png").stat().st_size > 1000
    assert len((out / "val.csv").read_text().splitlines()) == 4  # header, steps 2 and 4, the end
    assert len((out / "log.csv").read_text().splitlines()) == 1  # the header: rows every 10 steps
    d = torch.load(best, weights_only=False)
    assert d["format"] == "hrpose_ros.scorer/1" and d["history"]["config"]["steps"] == 4
    model = scorer_net(torch.load(refiner, weights_only=False))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in d["state_dict"].items()})


def test_a_score_head_leaves_the_refiners_pose_outputs_alone(tmp_path):
    torch.manual_seed(0)
    refiner = RefinerNet(pretrained=False)
    torch.nn.init.normal_(refiner.head[-1].weight, std=0.01)  # not the identity update
    d = refiner_to_dict(refiner, "lite0", [1])
    model = scored_refiner(d)
    assert all(not p.requires_grad for p in model.pose_parameters())
    assert all(p.requires_grad for p in model.score_head.parameters()) and not model.training
    pair = torch.rand(3, 6, 128, 128)
    with torch.no_grad():
        plain, scored = refiner_from_dict(d)(pair), model(pair)
    assert scored.shape == (3, 10) and torch.all(scored[:, 9] == 0)  # the head starts at logit 0
    torch.testing.assert_close(scored[:, :9], plain, rtol=0, atol=0)
    torch.nn.init.normal_(model.score_head[-1].weight, std=0.1)
    path = tmp_path / "scored.pt"
    torch.save(refiner_to_dict(model, "lite0", [1]), path)
    back = refiner_from_dict(load_refiner(path))
    assert back.score_head is not None
    with torch.no_grad():
        torch.testing.assert_close(back(pair), model(pair), rtol=0, atol=2e-3)  # fp16 in the file


def test_a_short_score_head_run_trains_the_head_only(toy, tmp_path):
    split, objects, refiner = toy
    config = ScorerTrainConfig(
        train=(str(split),), val=str(split), out=str(tmp_path / "h"), refiner=str(refiner),
        steps=4, batch=4, threads=2, val_every=2, val_samples=8, max_steps=1, head=True, lr=1e-2,
    )
    best = train(config, progress=False)
    assert best.name == "refiner.pt"
    d = load_refiner(best)  # a refiner file, with its score head
    assert d["format"] == "hrpose_ros.refiner/1" and d["score"] is True
    assert d["history"]["score_head"]["config"]["head"] is True
    start = {k: v.float() for k, v in torch.load(refiner, weights_only=False)["state_dict"].items()}
    trained = {k: v.float() for k, v in d["state_dict"].items()}
    assert all(torch.equal(trained[k], v) for k, v in start.items())  # the refiner's weights, as they were
    assert trained["score_head.5.weight"].abs().max() > 0  # the head moved from its zero start


def test_multistart_keeps_the_first_start_when_no_hypothesis_scores_higher(toy, tmp_path, capsys):
    """An untrained refiner leaves every start where it is and an untrained scorer gives every
    hypothesis logit 0: the first start (here the true pose) is kept, and the oracle finds it."""
    from training import multistart
    from training.pipeline_starts import STARTS_FILE
    from training.train_scorer import save

    split, objects, refiner = toy
    frames = bop_reader.read_split(split)
    rows = [(n, g.gt_id, g.R, g.t) for n, f in enumerate(frames) for g in f.instances]
    np.savez(split / STARTS_FILE, frame=np.array([r[0] for r in rows]), gt_id=np.array([r[1] for r in rows]),
             R=np.stack([r[2] for r in rows]), t=np.stack([r[3] for r in rows]), error=np.zeros(len(rows)))
    scorer = tmp_path / "scorer.pt"
    save(scorer_net(torch.load(refiner, weights_only=False)), ScorerTrainConfig((), "", ""), scorer, objects)
    try:
        multistart.main(["--split", str(split), "--scorer", str(scorer), "--refiner", str(refiner),
                         "--jitter", "2", "--steps", "1", "--out", str(tmp_path / "ms")])
    finally:
        (split / STARTS_FILE).unlink()
    printed = capsys.readouterr().out
    assert "first start, 1 step:        100.0 %" in printed
    assert "scorer, margin 0.0 logit:   100.0 %" in printed
    assert "oracle:                     100.0 %" in printed
    have = int(printed.split(" of ")[0].split()[-1])
    assert have > 5 and len((tmp_path / "ms" / "multistart.csv").read_text().splitlines()) == 1 + have
