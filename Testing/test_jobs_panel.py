"""The Training/Generation panels' decisions (CTDiffusionLib.jobs.panel, .plans): the preset the panel shows is
the preset the engine trains, with the preset's own values unless the user changed them; a sampler's steps are
the ones shown; run/export/report folders and the training source."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from CTDiffusionLib.cli import build_parser
from CTDiffusionLib.samplers import SAMPLERS
from CTDiffusionLib.jobs import build_command, panel, plans
from CTDiffusionLib.presets import PRESETS
from CTDiffusionLib.profiles import PROFILES
from CTDiffusionLib.requests import GenerateRequest, TrainRequest, request_from
from CTDiffusionLib.training.config import build_config


def _engine_config(settings: TrainRequest) -> dict:
    """What the engine would train: the real CLI parser and the real config resolution."""
    request = request_from(build_parser().parse_args(settings.argv()))
    return build_config(request, list(settings.data))


def _train(profile, preset, values, **kw):
    return TrainRequest(profile=profile, data=["/data"], out="/runs/r", device="cpu",
                         **panel.training_overrides(profile, preset, values), **kw)


@pytest.mark.parametrize("profile,preset", [(pr, name) for pr in PRESETS for name in PRESETS[pr]])
def test_preset_shown_is_preset_trained(profile, preset):
    shown = panel.preset_panel(profile, preset)
    settings = _train(profile, preset, shown)
    assert settings.argv().count("--preset") == 1 and preset in settings.argv()
    # nothing but the preset is sent when the user changed nothing
    assert (settings.steps, settings.epochs, settings.batch_size, settings.lr, settings.schedule, settings.augment) \
        == (None, None, None, None, None, None)
    config = _engine_config(settings)
    assert config["preset"] == preset
    assert config["training"]["steps"] == shown.length and config["training"]["batch_size"] == shown.batch_size
    assert config["training"]["lr"] == shown.lr and config["diffusion"]["beta_schedule"] == shown.schedule
    aug = config["data"]["augment"]
    assert tuple(a for a, on in (("zoom", aug.get("zoom")), ("flip", aug.get("flip")),
                                 ("rotate", aug.get("rotate_deg")))
                 if on) == shown.augment


def test_changed_values_are_sent_and_trained():
    shown = panel.preset_panel("cardiac-masks", "tiny2d")
    changed = panel.TrainingPanel("steps", shown.length + 7, shown.batch_size * 2, shown.lr / 10,
                                  "cosine" if shown.schedule == "linear" else "linear", ()).with_augment(["flip"])
    settings = _train("cardiac-masks", "tiny2d", changed)
    config = _engine_config(settings)
    assert config["preset"] == "tiny2d"
    assert config["training"]["steps"] == changed.length and config["training"]["batch_size"] == changed.batch_size
    assert config["training"]["lr"] == pytest.approx(changed.lr)
    assert config["diffusion"]["beta_schedule"] == changed.schedule
    assert config["data"]["augment"]["flip"] and not config["data"]["augment"]["zoom"]
    # epochs mode always sends epochs; switching all augmentation off sends "none"
    epochs = panel.TrainingPanel("epochs", 3, shown.batch_size, shown.lr, shown.schedule, ())
    args = build_parser().parse_args(_train("cardiac-masks", "tiny2d", epochs).argv())
    assert (args.epochs, args.steps, args.augment) == (3, None, "none")
    # minutes mode sends a time budget, which the engine records instead of a step count
    minutes = panel.TrainingPanel("minutes", 30, shown.batch_size, shown.lr, shown.schedule, shown.augment)
    settings = _train("cardiac-masks", "tiny2d", minutes)
    args = build_parser().parse_args(settings.argv())
    assert (args.minutes, args.steps, args.epochs) == (30.0, None, None)
    assert _engine_config(settings)["training"]["minutes"] == 30.0
    # switching the unit gives a value that makes sense in it (1400 steps read as minutes would be a day)
    assert panel.length_for_mode("cardiac-masks", "tiny2d", "minutes", "steps", shown.length) == panel.DEFAULT_MINUTES
    assert panel.length_for_mode("cardiac-masks", "tiny2d", "steps", "minutes", 45) == shown.length
    assert panel.length_for_mode("cardiac-masks", "tiny2d", "minutes", "minutes", 45) == 45
    with pytest.raises(ValueError, match="one of epochs, steps or minutes"):
        TrainRequest(profile="prostate-ct", data=["/d"], out="/o", steps=10, minutes=5).argv()


def test_no_preset_means_the_profile_default_and_combos_come_from_the_table():
    for profile in PRESETS:
        names = [name for _, name in panel.preset_choices(profile)]
        assert sorted(names) == sorted(PRESETS[profile]) and names[0] == PROFILES[profile].default_preset
        assert panel.preset_name(profile, "") == PROFILES[profile].default_preset
        assert panel.preset_name(profile, "not-a-preset") == PROFILES[profile].default_preset
        # the combo's default is sent explicitly, so the engine cannot pick another one
        assert _train(profile, "", panel.preset_panel(profile, None)).preset == PROFILES[profile].default_preset
    assert panel.profile_choices() == [(p.label, p.name) for p in PROFILES.values()]
    assert all(PROFILES[name].default_preset in PRESETS[name] for name in PRESETS)
    label = dict((n, l) for l, n in panel.preset_choices("prostate-ct"))["tiny"]
    t = PRESETS["prostate-ct"]["tiny"]
    assert f"{t['training']['steps']} steps" in label and "32x32x8" in label


def test_sampler_steps_shown_are_steps_sent():
    from CTDiffusionLib.diffusion.schedulers import DEFAULT_SAMPLER_STEPS
    from CTDiffusionLib.samplers import DEFAULT_SAMPLER

    assert {k: v for k, v in panel.SAMPLER_STEPS.items() if k} == DEFAULT_SAMPLER_STEPS
    assert set(panel.SAMPLER_STEPS) == {panel.MODEL_DEFAULT, *SAMPLERS}
    assert [n for _, n in panel.sampler_choices()] == list(panel.SAMPLER_STEPS)
    assert panel.sampler_choices()[0][1] == panel.MODEL_DEFAULT == panel.DEFAULT_SAMPLER
    for sampler in panel.SAMPLER_STEPS:
        shown = panel.sampler_default_steps(sampler)
        g = GenerateRequest(model="m", num=1, out="o", sampler=sampler,
                             steps=panel.sampling_steps_override(sampler, shown))
        args = build_parser().parse_args(g.argv())
        assert args.steps is None  # the engine's default for that sampler = the number shown
        # "the model's own" sends no --sampler: whichever objective the model has, its default runs the steps shown
        for objective in DEFAULT_SAMPLER:
            assert DEFAULT_SAMPLER_STEPS[args.sampler or DEFAULT_SAMPLER[objective]] == shown
    g = GenerateRequest(model="m", num=1, out="o", sampler="ddpm", steps=panel.sampling_steps_override("ddpm", 200))
    assert build_parser().parse_args(g.argv()).steps == 200
    # no label promises a step count the panel does not send
    for label, name in panel.sampler_choices():
        assert "steps" not in label or str(panel.SAMPLER_STEPS[name]) in label


def test_run_and_export_folders(tmp_path):
    now = time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))
    run = plans.new_run_folder(tmp_path, "prostate-ct", now)
    assert run == tmp_path / "prostate-ct-20260102-030405"
    assert plans.exported_data_folder(run) == tmp_path / "prostate-ct-20260102-030405-data"
    run.mkdir()
    assert plans.new_run_folder(tmp_path, "prostate-ct", now).name == "prostate-ct-20260102-030405-2"
    g = plans.generation_folder("run", str(run), str(tmp_path), now)
    assert g == run / "generated-20260102-030405"
    assert plans.generation_folder("bundle", str(run), str(tmp_path), now).parent == tmp_path
    q = plans.quality_folders("", str(tmp_path), now)
    assert q.report == tmp_path / "quality-20260102-030405" and q.real_export.name.endswith("-real")
    assert plans.training_conditions("cardiac-masks", True) == ("group", "phase")
    assert plans.training_conditions("cardiac-masks", False) is None
    assert plans.training_conditions("prostate-ct", True) is None


def test_training_source_choice(tmp_path):
    with pytest.raises(ValueError, match="data folder"):
        plans.training_source("folder", "", 0, tmp_path, "prostate-ct")
    with pytest.raises(ValueError, match="Select the volumes"):
        plans.training_source("nodes", "", 0, tmp_path, "prostate-ct")
    s = plans.training_source("folder", "/data/ct", 0, tmp_path, "prostate-ct")
    assert s.data == ["/data/ct"] and s.export_to is None and s.run_dir.parent == tmp_path
    s = plans.training_source("nodes", "", 3, tmp_path, "prostate-ct")
    assert s.export_to == plans.exported_data_folder(s.run_dir) and s.data == [str(s.export_to)]
    with pytest.raises(ValueError, match="no run with a checkpoint"):
        plans.training_source("nodes", "", 3, tmp_path, "prostate-ct", resume_run=str(tmp_path / "nothing"))
    old = tmp_path / "old-run"
    (old / "checkpoints").mkdir(parents=True)
    (old / "checkpoints" / "step_00000004.pt").write_bytes(b"x")
    (old / "config.json").write_text(json.dumps({"data": {"sources": ["/data/old"]}}))
    s = plans.training_source("folder", "/data/new", 0, tmp_path, "prostate-ct", resume_run=str(old))
    assert s.run_dir == old and s.data == ["/data/old"] and s.export_to is None
    assert plans.resumable_runs(tmp_path) == [old] and plans.resumable_runs(tmp_path / "none") == []
    assert plans.training_data_for_evaluation(str(old)) == "/data/old"
