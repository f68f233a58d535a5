"""The decisions behind the module's paired jobs, benchmark and training notices, without Qt: what each settings
object sends (checked by the engine's own parser), the structure choice, node pairing, folders, the utility rows
and the notices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from CTDiffusionLib.cli import build_parser
from CTDiffusionLib.jobs import notices, paired
from CTDiffusionLib.jobs.commands import build_command, model_structures
from CTDiffusionLib.requests import GenerateRequest, TrainRequest, UtilityRequest
from CTDiffusionLib.utility import table


def _parse(settings):
    """What the child parses of the command the module builds."""
    argv = build_command(settings, in_slicer=False).argv
    return build_parser().parse_args(argv[argv.index("-m") + 2:])


def test_settings_send_what_the_engine_parses():
    t = _parse(TrainRequest(profile="prostate-ct", data=["pairs"], out="run", with_labels=True,
                             structures="prostate,bones=femur+hip_bone"))
    assert t.with_labels and t.structures == "prostate,bones=femur+hip_bone"
    with pytest.raises(ValueError, match="--structures needs --with-labels"):  # never sent without labels
        TrainRequest(profile="prostate-ct", data=["ct"], out="run", structures="a structure")
    g = _parse(GenerateRequest(model="run", num=None, out="gen", from_labels="seg.nii.gz"))
    assert (g.num, g.from_labels) == (None, "seg.nii.gz")
    assert "--from-labels" not in GenerateRequest(model="run", num=3, out="gen").argv()
    u = _parse(UtilityRequest(train="a", synthetic="b", test="c", out="u", seeds=2, ratio=0.5,
                               structures="prostate"))
    assert (u.train, u.synthetic, u.test, u.out, u.seeds, u.ratio, u.structures, u.events) == (
        "a", "b", "c", "u", 2, 0.5, "prostate", True)
    command = build_command(UtilityRequest(train="a", synthetic="b", test="c", out="u"))
    assert command.events_file == str(Path("u") / "events.jsonl") and command.stop_file.endswith("stop-request")


def test_structure_choice_all_is_the_default_and_none_is_refused():
    names = ["prostate", "bladder", "rectum"]
    assert paired.structures_spec(names, names) is None
    assert paired.structures_spec(["rectum", "prostate"], names) == "prostate,rectum"  # the data's order
    with pytest.raises(ValueError, match="at least one structure"):
        paired.structures_spec([], names)


def test_segmentations_pair_with_the_volume_they_were_drawn_on_else_in_order():
    drawn = {"seg b": "ct b"}
    pairs = paired.pair_nodes(["ct a", "ct b", "ct c"], ["seg b", "seg x", "seg y"], drawn.get)
    assert pairs == [("ct b", "seg b"), ("ct a", "seg x"), ("ct c", "seg y")]
    with pytest.raises(ValueError, match="2 volumes and 1 segmentations"):
        paired.pair_nodes(["a", "b"], ["s"], drawn.get)
    with pytest.raises(ValueError, match="Select the CT volumes"):
        paired.pair_nodes([], [], drawn.get)


def test_folders_of_the_paired_jobs(tmp_path):
    target = paired.labels_generation("bundle", "", tmp_path, "my_seg", now=0)
    assert target.labels_file == target.out.with_name(target.out.name + "-labels") / "my_seg.nii.gz"
    assert target.out.parent == tmp_path and target.out.name.startswith("generated-")
    assert paired.utility_folder(str(tmp_path / "run"), tmp_path, now=0).parent == tmp_path / "run"
    assert not paired.is_pairs_folder(tmp_path)
    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / sub).mkdir()
    (tmp_path / "dataset.json").write_text("{}")
    assert paired.is_pairs_folder(tmp_path)


def test_utility_inputs_default_to_the_run_data_and_the_last_generation(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": {"sources": [str(tmp_path / "pairs")]}}))
    inputs = paired.utility_inputs("", "", "test", str(run), "gen")
    assert inputs == paired.UtilityInputs(str(tmp_path / "pairs"), "gen", "test")
    with pytest.raises(ValueError, match="real training pairs"):
        paired.utility_inputs("", "gen", "test", "", "")
    with pytest.raises(ValueError, match="Generate pairs first"):
        paired.utility_inputs("train", "", "test", "", "")
    with pytest.raises(ValueError, match="held-out real pairs"):
        paired.utility_inputs("train", "gen", "", "", "")


def test_model_structures_in_label_value_order(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text(json.dumps({"labels": {"structures": [
        {"name": "bladder", "value": 2}, {"name": "prostate", "value": 1}]}}))
    assert model_structures(tmp_path) == ["prostate", "bladder"]
    (tmp_path / "model" / "model.json").write_text(json.dumps({"profile": "prostate-ct"}))
    assert model_structures(tmp_path) == [] and model_structures(None) == []


def test_coarse_data_notice_from_sizes_and_the_preset_grid():
    text = notices.coarse_data_text([(32, 32, 8), (30, 34, 8), (32, 32, 8)], "prostate-ct", "default")
    assert "32x32" in text and "256x256" in text and "--preset demo" in text
    assert notices.coarse_data_text([(256, 256, 26)], "prostate-ct", "default") is None
    assert notices.coarse_data_text([], "prostate-ct", "default") is None
    assert notices.coarse_data_text([(32, 32, 8)], "prostate-ct", "no such preset") is None


def test_warning_texts_of_the_child_events():
    assert notices.warning_texts({"event": "warning", "message": "Hours on a CPU.", "hint": "Use --minutes."}) == \
           ["Hours on a CPU. Use --minutes."]
    assert notices.warning_texts({"event": "start", "warnings": ["coarse data", ""]}) == ["coarse data"]
    assert notices.warning_texts({"event": "progress", "step": 1}) == [] and notices.warning_texts(None) == []


def test_utility_rows_for_dice_and_for_pathology_accuracy():
    dice = {"arms": {"real": {"dice": 0.5, "dice_ci95": [0.4, 0.6], "hd95": 3.04, "hd95_unit": "mm"},
                     "synthetic": {"dice": None, "dice_ci95": None, "hd95": None}},
            "gain": {"dice": -0.02, "ci95": [-0.05, -0.01]}, "verdict": "hurts"}
    assert table.utility_rows(dice) == [{"arm": "real only", "mean": "0.500", "interval": "0.400 .. 0.600",
                                         "hd95": "3.0 mm"},
                                        {"arm": "synthetic only", "mean": "–", "interval": "–", "hd95": "–"}]
    assert table.gain_text(dice) == ("Gain (real + synthetic − real only): -0.020 Dice, 95% interval "
                                     "-0.050 .. -0.010 — hurts")
    assert table.verdict_text(dice) == table.gain_text(dice)  # no verdict_line written
    masks = {"arms": {"real+synthetic": {"accuracy": 0.8, "accuracy_ci95": [0.7, 0.9]}},
             "gain": {"accuracy": 0.1, "ci95": [0.05, 0.15]}, "verdict": "helps", "verdict_line": "helps: ..."}
    assert table.metric_title(masks) == "Accuracy"
    assert table.utility_rows(masks) == [{"arm": "real + synthetic", "mean": "0.800", "interval": "0.700 .. 0.900",
                                          "hd95": "–"}]
    assert table.verdict_text(masks) == "helps: ..."
