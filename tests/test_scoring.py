"""Tests of onepixel.scoring: one reading of a model's output for every stage.

1. :class:`Classifier` against an independent float64 computation, uint8 and float input,
   batching, ``auto`` detection, eval mode and the rule for NaN / infinite outputs;
2. a model and its softmax-ending twin give the same attack, locality analysis and
   vulnerability maps, through the library functions and through the stages;
3. for a model returning logits the stages' numbers are those of the formula used before
   the classifier existed, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import onepixel.models
from helpers import _Mixed
from onepixel.analysis.locality import clean_true_prob, evaluate_shifts, locality_analysis
from onepixel.analysis.vulnerability import all_shifts, vulnerability_maps
from onepixel.attack import OnePixelAttack, load_attack
from onepixel.attack.results import attack_model_output, load_attacked_model
from onepixel.data.dataset import apply_pixels
from onepixel.errors import ConfigError, DataError
from onepixel.files import open_netcdf
from onepixel.scoring import Classifier, as_classifier
from onepixel.stages import run_stage

CLASSES = 3


class _Centre(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x - 1


def cnn(seed: int = 0, scale: float = 3.0) -> nn.Module:
    """A random CNN on 1x8x8 images whose class depends on the pixels (logits scaled by ``scale``)."""
    torch.manual_seed(seed)
    model = nn.Sequential(_Centre(), nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(256, CLASSES))
    with torch.no_grad():
        model[-1].weight.mul_(scale)
        model[-1].bias.zero_()
    return model.eval()


def twin(model: nn.Module) -> nn.Module:
    """The same model ending in a softmax: it returns probabilities."""
    return nn.Sequential(model, nn.Softmax(1)).eval()


def images_u8(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def reference_probs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """float64 softmax of the model's output, computed independently of the classifier."""
    with torch.no_grad():
        return torch.softmax(model(images.float() / 255).double(), 1)


# ===========================================================================
# 1. the Classifier
# ===========================================================================
@pytest.mark.parametrize("kind", ["logits", "probabilities"])
def test_classifier_matches_float64(kind):
    model = cnn()
    images = images_u8(11)
    expected = reference_probs(model, images)
    labels = torch.arange(11) % CLASSES
    clf = Classifier(model if kind == "logits" else twin(model), output=kind, batch_size=4)
    probs = clf.probs(images)
    assert probs.dtype == torch.float32 and probs.shape == (11, CLASSES) and probs.device.type == "cpu"
    torch.testing.assert_close(probs.double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(clf.log_probs(images).double(), expected.log(), rtol=0, atol=1e-5)
    true_prob = clf.true_prob(images, labels)
    assert true_prob.dtype == torch.float64
    torch.testing.assert_close(true_prob, expected.gather(1, labels[:, None])[:, 0], rtol=0, atol=1e-6)
    assert torch.equal(clf.predict(images), expected.argmax(1))
    logits = clf.logits(images)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(torch.softmax(logits.double(), 1), expected, rtol=0, atol=1e-6)
    scores = clf.scores(images, labels)
    assert torch.equal(scores.fooled, expected.argmax(1) != labels) and not scores.rejected.any()
    assert clf.output == kind and clf.rejected == 0


def test_uint8_and_float_images_agree():
    model, images = cnn(), images_u8(6)
    clf = Classifier(model, output="logits")
    for method in ("logits", "probs", "log_probs", "predict"):
        assert torch.equal(getattr(clf, method)(images), getattr(clf, method)(images.float() / 255)), method
        assert torch.equal(getattr(clf, method)(images), getattr(clf, method)(images.double() / 255)), method
    with pytest.raises(DataError, match="uint8"):
        clf.probs(images.long())


@pytest.mark.parametrize("kind", ["logits", "probabilities"])
def test_batch_size_does_not_change_results(kind):
    model = cnn(2) if kind == "logits" else twin(cnn(2))
    images, labels = images_u8(9, seed=4), torch.arange(9) % CLASSES
    one, every = Classifier(model, batch_size=1), Classifier(model, batch_size=9)
    torch.testing.assert_close(one.probs(images), every.probs(images), rtol=0, atol=1e-6)
    torch.testing.assert_close(one.true_prob(images, labels), every.true_prob(images, labels), rtol=0, atol=1e-6)
    assert torch.equal(one.predict(images), every.predict(images))
    assert one.output == every.output == kind
    # scores are the same whether the classifier batches or the caller gives one batch
    a, b = one.scores(images, labels), every.score_batch(images, labels)
    assert torch.equal(a.pred, b.pred) and torch.equal(a.fooled, b.fooled)


def test_auto_resolves_on_the_first_batch_and_stays():
    model, images = cnn(), images_u8(4)
    clf = Classifier(twin(model))
    assert clf.output is None and clf.requested_output == "auto"
    clf.predict(images)
    assert clf.output == "probabilities"
    logit_clf = Classifier(model)
    logit_clf.probs(images)
    assert logit_clf.output == "logits"

    class Flip(nn.Module):
        """Probabilities on the first call, logits afterwards: the first batch decides."""

        calls = 0

        def forward(self, x):
            self.calls += 1
            out = model(x)
            return torch.softmax(out, 1) if self.calls == 1 else out

    flip = Classifier(Flip(), batch_size=2)
    flip.probs(images)
    assert flip.output == "probabilities"
    assert as_classifier(flip) is flip and as_classifier(model, output="logits").output == "logits"
    with pytest.raises(ConfigError, match="output"):
        Classifier(model, output="softmax")
    with pytest.raises(ConfigError, match="batch_size"):
        Classifier(model, batch_size=0)


class _NonFinite(nn.Module):
    """``model``'s output, but by the value v of pixel (0, 0): v = 1 NaN, v = 2 one +inf, v = 3 one -inf
    (probabilities: v = 1 NaN, v = 2 the probabilities (1, 0, 0))."""

    def __init__(self, model: nn.Module, probabilities: bool) -> None:
        super().__init__()
        self.model, self.probabilities = model, probabilities

    def forward(self, x):
        out = self.model(x).clone()
        mark = torch.round(x[:, 0, 0, 0] * 255)
        if self.probabilities:
            out = torch.softmax(out, 1)
            out[mark == 1] = float("nan")
            out[mark == 2] = torch.tensor([1.0, 0.0, 0.0])  # a probability of 0 is allowed
            return out
        out[mark == 1] = float("nan")
        out[mark == 2, 0] = float("inf")
        out[mark == 3, 1] = float("-inf")
        return out


@pytest.mark.parametrize("kind", ["logits", "probabilities"])
def test_non_finite_rows_are_rejected(kind):
    model, images = _NonFinite(cnn(), kind == "probabilities"), images_u8(5)
    images[:, 0, 0, 0] = torch.tensor([10, 1, 2, 3, 10])
    bad = [1, 2, 3] if kind == "logits" else [1]
    good = [i for i in range(5) if i not in bad]
    clf = Classifier(model, output=kind, batch_size=2)
    probs = clf.probs(images)
    assert clf.rejected == len(bad)
    assert torch.isnan(probs[bad]).all() and torch.isfinite(probs[good]).all()
    assert torch.isnan(clf.log_probs(images)[bad]).all()
    pred = clf.predict(images)
    assert (pred[bad] == -1).all() and (pred[good] >= 0).all()
    labels = torch.full((5,), 2)  # class 2 is never the argmax of row 2's (1, 0, 0)
    scores = clf.scores(images, labels, targets=torch.full((5,), -1))
    assert torch.equal(scores.rejected, torch.isin(torch.arange(5), torch.tensor(bad)))
    assert not scores.fooled[bad].any() and (scores.pred[bad] == -1).all()
    assert torch.isnan(scores.true_prob[bad]).all() and torch.isfinite(scores.true_prob[good]).all()
    assert torch.isnan(clf.true_prob(images, labels)[bad]).all()
    logits = clf.logits(images)  # kept as they are
    assert torch.isnan(logits[1]).all()
    if kind == "logits":
        assert logits[2, 0] == float("inf") and logits[3, 1] == float("-inf")
    else:
        assert torch.isfinite(logits[2]).all()  # log 0 read as log of the smallest normal float32
    assert clf.rejected == 6 * len(bad)  # every evaluation counts
    clf.reset_rejected()
    assert clf.rejected == 0


def test_eval_mode_during_calls_and_flags_restored():
    torch.manual_seed(3)
    model = _Mixed()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.train()
    model.frozen.eval()
    flags = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = images_u8(6)
    with torch.no_grad():
        expected = torch.softmax(model.eval()(images.float() / 255), 1)
    for name, module in model.named_modules():
        module.training = flags[name]
    probs = Classifier(model, output="logits", batch_size=4).probs(images)
    torch.testing.assert_close(probs, expected, rtol=0, atol=0)
    assert {name: m.training for name, m in model.named_modules()} == flags
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not probs.is_inference() and not probs.requires_grad


# ===========================================================================
# 2. a model and its softmax-ending twin
# ===========================================================================
def attack_pair(n: int = 6, targeted: bool = False):
    model = cnn(5)
    images = images_u8(n, seed=9)
    labels = Classifier(model).predict(images)
    targets = (labels + 1) % CLASSES if targeted else None
    results = []
    for m in (model, twin(model)):
        attack = OnePixelAttack(m, population=16, generations=4, seed=3, batch_size=40, targeted=targeted)
        results.append((attack, attack.run(images, labels, targets)))
    return model, images, labels, targets, results


@pytest.mark.parametrize("targeted", [False, True])
def test_twin_models_give_the_same_attack(targeted):
    _model, _images, _labels, _targets, ((la, a), (pa, b)) = attack_pair(targeted=targeted)
    assert la.model_output == "logits" and pa.model_output == "probabilities"
    assert int(a.success.sum()) > 0  # a real search
    for name in (
        "success",
        "pixel_x",
        "pixel_y",
        "color",
        "true_class",
        "target_class",
        "adv_class",
        "adversarial",
        "queries",
    ):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name in ("prob_clean", "prob_adv"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=1e-6)


def _shifts_of(images: torch.Tensor, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    px, py = rng.integers(1, 7, (n, 1)), rng.integers(1, 7, (n, 1))
    colors = rng.integers(0, 256, (n, 1, 1)).astype(np.uint8)
    return px, py, colors


@pytest.mark.parametrize("how", ["auto", "explicit", "classifier"])
def test_twin_models_give_the_same_locality(how):
    model, images, labels, _targets, ((_, res), _) = attack_pair()
    targets = np.array([-1, -1, -1, 0, 1, 2])
    px, py, colors = res.pixel_x.numpy(), res.pixel_y.numpy(), res.color.numpy()
    out = []
    for m, kind in ((model, "logits"), (twin(model), "probabilities")):
        arg = Classifier(m, output=kind) if how == "classifier" else m
        given = {"output": kind} if how == "explicit" else {}  # auto: the default
        out.append(
            locality_analysis(
                arg,
                images,
                labels.numpy(),
                px,
                py,
                colors,
                targets=targets,
                max_distance=3,
                random_positions=10,
                seed=2,
                batch_size=37,
                **given,
            )
        )
    a, b = out
    assert a.attrs["model_output"] == "logits" and b.attrs["model_output"] == "probabilities"
    assert a.attrs["rejected_evaluations"] == b.attrs["rejected_evaluations"] == 0
    assert int(a["n_fooled"].sum()) > 0
    for name in ("n_positions", "n_fooled", "baseline_n", "baseline_fooled", "rate", "baseline_rate", "success_rate"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    for name in (
        "mean_true_prob",
        "baseline_true_prob",
        "clean_true_prob",
        "true_prob_change",
        "baseline_true_prob_change",
    ):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=0, atol=1e-6, err_msg=name)
    # the twin's probabilities are its own output, not a softmax of it
    np.testing.assert_allclose(
        b["clean_true_prob"].values, reference_probs(model, images).gather(1, labels[:, None])[:, 0].numpy(), atol=1e-6
    )


def test_twin_models_give_the_same_vulnerability_maps():
    model, images, labels, _targets, ((_, res), _) = attack_pair()
    targets = np.array([-1, -1, 0, -1, 2, -1])
    args = (images, labels.numpy(), res.pixel_x.numpy(), res.pixel_y.numpy(), res.color.numpy(), targets)
    fooled_a, prob_a, pred_a = vulnerability_maps(model, *args, batch_size=50)
    fooled_b, prob_b, pred_b = vulnerability_maps(twin(model), *args, batch_size=50)
    assert (fooled_a == 1).any() and (fooled_a == 0).any()
    np.testing.assert_array_equal(fooled_a, fooled_b)
    np.testing.assert_array_equal(pred_a, pred_b)
    np.testing.assert_allclose(prob_a, prob_b, rtol=0, atol=1e-6)


def _softmax_ending_registry_models(monkeypatch) -> None:
    """Every model the checkpoint loader builds ends in a softmax (a forward hook; same weights, same names)."""
    build = onepixel.models.build_model

    def build_softmaxed(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, out: torch.softmax(out, 1))
        return model

    monkeypatch.setattr(onepixel.models, "build_model", build_softmaxed)


def test_twin_checkpoints_give_the_same_stage_results(toy, tmp_path, monkeypatch):
    cfg = {
        "device": "cpu",
        "attack": {"num_images": 6, "population": 16, "generations": 4, "batch_size": 64, "seed": 3},
        "locality": {"max_distance": 2, "random_positions": 8},
        "vulnerability": {"max_attacks": 4, "batch_size": 64},
    }
    files = {"checkpoint": toy / "lenet.pt", "test": toy / "test.nc"}
    for kind in ("logits", "probabilities"):
        if kind == "probabilities":
            _softmax_ending_registry_models(monkeypatch)
        attack = tmp_path / f"attack_{kind}.nc"
        run_stage("attack", files, {"out": attack}, config=cfg, wildcards={"shard": 0})
        for stage in ("locality", "vulnerability"):
            run_stage(stage, {**files, "attack": attack}, {"out": tmp_path / f"{stage}_{kind}.nc"}, config=cfg)
        loaded = load_attacked_model(files["checkpoint"], files["test"], attack, "cpu")
        assert loaded.model_output == kind and loaded.classifier().output == kind
    a, b = load_attack(tmp_path / "attack_logits.nc"), load_attack(tmp_path / "attack_probabilities.nc")
    assert a.attrs["model_output"] == "logits" and b.attrs["model_output"] == "probabilities"
    assert int(a["success"].sum()) > 0
    for name in ("success", "pixel_x", "pixel_y", "color", "true_class", "target_class", "adv_class", "sample_id"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    for name in ("prob_clean", "prob_adv"):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=0, atol=1e-6, err_msg=name)
    for stage, exact, close in (
        (
            "locality",
            ("n_positions", "n_fooled", "baseline_fooled", "success_rate", "sample_id"),
            ("mean_true_prob", "clean_true_prob", "baseline_true_prob", "true_prob_change"),
        ),
        (
            "vulnerability",
            ("fooled", "pred_class", "profile_n", "profile_fooled", "sample_id"),
            ("true_prob", "profile_true_prob", "true_prob_success"),
        ),
    ):
        x, y = (open_netcdf(tmp_path / f"{stage}_{kind}.nc", kind=stage) for kind in ("logits", "probabilities"))
        assert x.attrs["model_output"] == "logits" and y.attrs["model_output"] == "probabilities", stage
        for name in exact:
            np.testing.assert_array_equal(x[name].values, y[name].values, err_msg=f"{stage} {name}")
        for name in close:
            np.testing.assert_allclose(x[name].values, y[name].values, rtol=0, atol=1e-6, err_msg=f"{stage} {name}")


def test_attack_model_output_of_a_file():
    import xarray as xr

    with pytest.raises(DataError, match="attribute model_output is None"):
        attack_model_output(xr.Dataset())  # every attack file records it
    assert attack_model_output(xr.Dataset(attrs={"model_output": "probabilities"})) == "probabilities"
    with pytest.raises(DataError, match="model_output"):
        attack_model_output(xr.Dataset(attrs={"model_output": "auto"}))


# ===========================================================================
# 3. logits: the numbers of the formula used before, bit for bit
# ===========================================================================
def _old_evaluate_shifts(model, images, labels, targets, px, py, cols, jobs, batch_size):
    """The locality's evaluation before the classifier (softmax of the model's output, always)."""
    fooled, true_prob, pred = np.zeros(len(jobs), bool), np.zeros(len(jobs)), np.zeros(len(jobs), np.int64)
    labels_t, targets_t = torch.as_tensor(labels), torch.as_tensor(targets)
    px, py, cols, jobs_t = (torch.as_tensor(a) for a in (px, py, cols, jobs))
    with torch.no_grad():
        for start in range(0, len(jobs), batch_size):
            sample, dx, dy = jobs_t[start : start + batch_size].T
            batch = apply_pixels(images[sample], px[sample] + dx[:, None], py[sample] + dy[:, None], cols[sample])
            probs = torch.softmax(model(batch.float() / 255).float(), dim=1)
            guess = probs.argmax(dim=1)
            target = targets_t[sample]
            stop = start + len(sample)
            fooled[start:stop] = torch.where(target >= 0, guess == target, guess != labels_t[sample]).numpy()
            true_prob[start:stop] = probs.gather(1, labels_t[sample, None])[:, 0].double().numpy()
            pred[start:stop] = guess.numpy()
    return fooled, true_prob, pred


@pytest.mark.parametrize("output", ["logits", "auto"])
def test_logit_models_keep_their_numbers_bit_for_bit(output):
    model, images = cnn(7, scale=2.0), images_u8(5, seed=3)
    labels = np.arange(5) % CLASSES
    targets = np.array([-1, 0, -1, 2, -1])
    px, py, colors = _shifts_of(images, 5, seed=4)
    jobs, _ = all_shifts(px, py, 8, 8)
    expected = _old_evaluate_shifts(model, images, labels, targets, px, py, colors, jobs, 23)
    got = evaluate_shifts(model, images, labels, targets, px, py, colors, jobs, 23, output=output)
    for e, g in zip(expected, got, strict=True):
        assert e.dtype == g.dtype and e.tobytes() == g.tobytes()
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(images[s : s + 2].float() / 255).float(), 1) for s in range(0, 5, 2)])
    old_clean = probs.gather(1, torch.as_tensor(labels)[:, None])[:, 0].double().numpy()
    assert clean_true_prob(model, images, labels, 2, output=output).tobytes() == old_clean.tobytes()
