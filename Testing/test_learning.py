"""The model learns: a briefly trained tiny mask model beats an untrained one on a measurable anatomical property,
and (issue 5) conditioning on the ACDC group moves the LV size the right way, more so with guidance."""

import numpy as np
import pytest
import torch

from conftest import run_cli
from CTDiffusionLib.generation import decode, model_input_shape
from CTDiffusionLib.diffusion.sampling import sample
from CTDiffusionLib.diffusion.schedulers import sampler
from CTDiffusionLib.models.bundle import load_bundle
from CTDiffusionLib.models.conditioning import ConditionVocabulary
from CTDiffusionLib.models.factory import build_model

STEPS = 300
N = 24  # samples per setting


@pytest.fixture(scope="module")
def trained_conditional(mask_phantoms, tmp_path_factory):
    run = tmp_path_factory.mktemp("learn") / "run"
    assert run_cli("train", "--profile", "cardiac-masks", "--preset", "tiny2d", "--data", mask_phantoms, "--out", run,
                   "--steps", STEPS, "--batch-size", 12, "--lr", 2e-3, "--checkpoint-every", STEPS,
                   "--sample-every", 0, "--conditions", "group,phase", "--cond-drop", 0.2, "--augment", "none",
                   "--val-fraction", 0.1) == 0
    return load_bundle(run)


def _generate(model, meta, condition=None, guidance=1.0, seed=0):
    vocab = ConditionVocabulary(meta["conditions"])
    labels = torch.full((N,), vocab.encode(condition), dtype=torch.long)
    null = torch.full((N,), vocab.null_index, dtype=torch.long)
    x0 = sample(model, sampler("dpm++", meta["diffusion"], 20), model_input_shape(meta), range(seed, seed + N),
                torch.device("cpu"), labels, null, guidance)
    return np.stack([a[0] for a in decode(x0, meta)])


def lv_enclosed_fraction(masks: np.ndarray) -> float:
    """Share of LV pixels whose 4 neighbours are all LV or myocardium (LV must never touch RV or background)."""
    lv = masks == 3
    ok = np.isin(masks, (2, 3))
    pad = np.pad(ok, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    neighbours_ok = pad[:, :-2, 1:-1] & pad[:, 2:, 1:-1] & pad[:, 1:-1, :-2] & pad[:, 1:-1, 2:]
    return float((lv & neighbours_ok).sum() / max(lv.sum(), 1))


def test_trained_model_beats_untrained(trained_conditional):
    model, meta = trained_conditional
    torch.manual_seed(0)
    untrained = build_model(meta["model"], ConditionVocabulary(meta["conditions"]).num_embeddings).eval()
    trained_masks = _generate(model, meta)
    untrained_masks = _generate(untrained, meta)
    trained, baseline = lv_enclosed_fraction(trained_masks), lv_enclosed_fraction(untrained_masks)
    assert trained > baseline + 0.4, (trained, baseline)
    # and the label proportions look like a heart crop: mostly background, some of each structure
    background = (trained_masks == 0).mean()
    assert 0.5 < background < 0.95, background


def test_condition_separates_dcm_from_hcm_and_guidance_strengthens_it(trained_conditional):
    model, meta = trained_conditional
    lv_area = lambda masks: float((masks == 3).sum(axis=(1, 2)).mean())  # noqa: E731
    gaps = {}
    for w in (1.0, 3.0):
        dcm = lv_area(_generate(model, meta, {"group": "DCM", "phase": "ED"}, w, seed=100))
        hcm = lv_area(_generate(model, meta, {"group": "HCM", "phase": "ED"}, w, seed=100))
        gaps[w] = (dcm, hcm)
    dcm1, hcm1 = gaps[1.0]
    dcm3, hcm3 = gaps[3.0]
    assert dcm1 > 1.5 * hcm1, gaps
    assert dcm3 - hcm3 > dcm1 - hcm1, gaps
