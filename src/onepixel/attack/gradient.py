"""White-box L-inf gradient attacks (FGSM, PGD) with results in the one-pixel attack's format.

* :class:`FGSM`: the fast gradient sign method, Goodfellow, Shlens & Szegedy,
  *Explaining and Harnessing Adversarial Examples* (ICLR 2015, arXiv 1412.6572);
* :class:`PGD`: projected gradient descent with a random start, Madry, Makelov,
  Schmidt, Tsipras & Vladu, *Towards Deep Learning Models Resistant to
  Adversarial Attacks* (ICLR 2018, arXiv 1706.06083).

Both are torchattacks-like (``attack(images, labels)`` gives the adversarial
images) and :meth:`~PGD.run` returns the :class:`~onepixel.attack.de.AttackResult`
of :class:`~onepixel.attack.de.OnePixelAttack`, so the capture and propagation
stages read them unchanged (Vargas & Su, arXiv 1902.02947, compare propagation
maps of one-pixel attacks; these give the maps of dense L-inf perturbations).

8-bit results: the adversarial images of :meth:`~PGD.run` are ``round(x_adv * 255)``
clipped to ``[clean - q, clean + q]`` and to ``[0, 255]``, with
``q = floor(eps * 255)`` (:func:`eps_levels`): every stored image stays in the
eps-ball in 8-bit space, and ``success`` is re-evaluated on those uint8 images.
:func:`perturbation_sizes` measures a result's L-inf, L2 and L0 sizes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from onepixel.attack import rng
from onepixel.attack.base import Attack
from onepixel.attack.de import AttackResult, _as_uint8, _labels
from onepixel.errors import ConfigError, DataError
from onepixel.scoring import TINY, Classifier, looks_like_probabilities
from onepixel.torch_utils import eval_mode

#: images of the probe forward pass that checks the classes and detects probabilities
_PROBE = 4
#: slack of ``floor(eps * 255)``, so that ``eps = k / 255`` gives k levels despite float rounding
_LEVEL_SLACK = 1e-6


def eps_levels(eps: float) -> int:
    """The eps-ball's radius in 8-bit levels: ``floor(eps * 255)`` (``eps = 8 / 255`` gives 8)."""
    return math.floor(eps * 255 + _LEVEL_SLACK)


def quantise(clean: torch.Tensor, adversarial: torch.Tensor, eps: float) -> torch.Tensor:
    """8-bit adversarial images ``(N, C, H, W)`` uint8 in the eps-ball of ``clean``.

    Args:
        clean: ``(N, C, H, W)`` uint8 clean images.
        adversarial: ``(N, C, H, W)`` float adversarial images in [0, 1] (same device).
        eps: the L-inf radius in [0, 1] units.

    Returns:
        ``round(adversarial * 255)`` clipped to ``[clean - q, clean + q]`` and ``[0, 255]``,
        ``q = eps_levels(eps)``; NaN (from a non-finite gradient) is read as the clean value.
    """
    q = eps_levels(eps)
    base = clean.to(torch.float32)
    x = torch.round(adversarial.to(torch.float32) * 255)
    x = torch.where(torch.isnan(x), base, x)
    return torch.minimum(torch.maximum(x, base - q), base + q).clamp_(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class PerturbationSizes:
    """Sizes of perturbations, one row per image (CPU tensors).

    Attributes:
        linf: ``(N,)`` int64 ``max |adv - clean|`` in 8-bit levels.
        l2: ``(N,)`` float64 ``||(adv - clean) / 255||_2`` over ``(C, H, W)``.
        perturbed_pixels: ``(N,)`` int64 L0 size: pixels with at least one changed channel.
    """

    linf: torch.Tensor
    l2: torch.Tensor
    perturbed_pixels: torch.Tensor


def perturbation_sizes(clean: torch.Tensor, adversarial: torch.Tensor) -> PerturbationSizes:
    """L-inf, L2 and L0 sizes of uint8 perturbations ``adversarial - clean`` (both ``(N, C, H, W)``).

    A one-pixel attack has ``perturbed_pixels <= 1``; an L-inf attack up to ``H * W``.
    """
    if clean.shape != adversarial.shape or clean.dim() != 4:
        raise DataError(
            f"clean and adversarial must be equal (N, C, H, W) tensors; got {tuple(clean.shape)} and "
            f"{tuple(adversarial.shape)}"
        )
    diff = adversarial.detach().cpu().long() - clean.detach().cpu().long()
    n = diff.shape[0]
    return PerturbationSizes(
        linf=diff.abs().reshape(n, -1).amax(1) if diff.numel() else torch.zeros(n, dtype=torch.long),
        l2=(diff.double() / 255).square().reshape(n, -1).sum(1).sqrt(),
        perturbed_pixels=(diff != 0).any(1).reshape(n, -1).sum(1),
    )


def largest_change(clean: torch.Tensor, adversarial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pixel of each image whose change is largest, and its new colour.

    Args:
        clean, adversarial: ``(N, C, H, W)`` uint8 images.

    Returns:
        ``pixel_x``, ``pixel_y`` ``(N, 1)`` int64 and ``color`` ``(N, 1, C)`` uint8: the pixel
        maximising ``sum_c |adversarial - clean|`` (ties: the first in row-major order;
        an unchanged image gives pixel (0, 0)), and its value in ``adversarial``.
    """
    n, _, h, w = adversarial.shape
    change = (adversarial.long() - clean.long()).abs().sum(1).reshape(n, h * w)
    flat = change.argmax(1) if n else torch.zeros(0, dtype=torch.long, device=change.device)
    ys, xs = flat // w, flat % w
    color = adversarial[torch.arange(n, device=adversarial.device), :, ys, xs]  # (N, C)
    return xs[:, None], ys[:, None], color[:, None, :]


def _as_float(images: object) -> torch.Tensor:
    """``images`` ``(N, C, H, W)`` as float in [0, 1]: uint8 / 255, floats as given (checked)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        desc = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"images: expected a tensor (N, C, H, W), uint8 in [0, 255] or float in [0, 1]; got {desc}")
    if images.dtype == torch.uint8:
        return images.float() / 255
    _as_uint8(images)  # the same checks (floating point, no NaN, in [0, 1])
    return images.detach()


class _GradientAttack(Attack):
    """What FGSM and PGD share: inputs, batches, the loss gradient, the 8-bit result."""

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        alpha: float,
        steps: int,
        random_start: bool,
        targeted: bool,
        seed: int,
        batch_size: int,
        device: str | torch.device | None,
        output: str,
    ) -> None:
        super().__init__(  # checks every option before storing any
            model,
            eps=eps,
            alpha=alpha,
            steps=steps,
            random_start=random_start,
            seed=seed,
            targeted=targeted,
            batch_size=batch_size,
            device=device,
            output=output,
        )
        self.eps, self.alpha, self.steps = float(eps), float(alpha), int(steps)
        self.random_start, self.seed = bool(random_start), int(seed)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """torchattacks-style: the adversarial images, in the dtype and on the device of ``images``.

        uint8 images: :meth:`run`'s 8-bit result. Float images in [0, 1]: the float
        adversarial images as the method computes them (in the float eps-ball, not
        rounded to 8 bits; as torchattacks returns them).
        """
        if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
            return self.run(images, labels, targets).adversarial.to(images.device)
        return self.perturb(images, labels, targets).to(images.device, images.dtype)

    # ------------------------------------------------------------------
    def perturb(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Float adversarial images ``(N, C, H, W)`` float32 on the CPU, before any rounding to 8 bits.

        ``images`` uint8, or float in [0, 1] (attacked as given); the other arguments as :meth:`run`.
        """
        x0 = _as_float(images)
        labels, targets, ids = self._check_classes(x0.shape[0], labels, targets, ids)
        out = torch.empty(x0.shape, dtype=torch.float32)
        with eval_mode(self.model):
            self.model.to(self.device)
            self._probe(x0[:_PROBE], labels, targets)
            cls = targets if targets is not None else labels
            keys = rng.image_keys(self.seed, ids)
            for s in range(0, x0.shape[0], self.batch_size):
                e = min(x0.shape[0], s + self.batch_size)
                adv, _ = self._attack_batch(x0[s:e].to(self.device, torch.float32), cls[s:e], keys[s:e])
                out[s:e] = adv.cpu()
        return out

    def run(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
    ) -> AttackResult:
        """Attack every image; the 8-bit result (see the class docstring).

        Args:
            images: ``(N, C, H, W)`` uint8, or float in [0, 1] (converted with ``round(x * 255)``).
            labels: ``(N,)`` true classes.
            targets: ``(N,)`` target classes; required iff ``targeted``.
            ids: ``(N,)`` non-negative identifiers keying each image's random start
                (default ``arange(N)``); pass global ids (test-set indices) so that a shard
                or subset of the images reproduces the rows of one run over all of them.
        """
        clean = _as_uint8(images).cpu()  # batches go to the device; the result is on the CPU
        n = clean.shape[0]
        labels, targets, ids = self._check_classes(n, labels, targets, ids)
        adv = torch.empty_like(clean)
        rejected = torch.zeros(n, dtype=torch.long)
        start = time.perf_counter()
        with eval_mode(self.model):
            self.model.to(self.device)
            self._probe(clean[:_PROBE].float() / 255, labels, targets)
            cls = targets if targets is not None else labels
            keys = rng.image_keys(self.seed, ids)
            for s in range(0, n, self.batch_size):
                e = min(n, s + self.batch_size)
                batch = clean[s:e].to(self.device)
                x, rej = self._attack_batch(batch.float() / 255, cls[s:e], keys[s:e])
                adv[s:e] = quantise(batch, x, self.eps).cpu()
                rejected[s:e] = rej.cpu()
            result = self._result(clean, adv, labels, targets, rejected)
        seconds = time.perf_counter() - start
        self.last_stats = {
            "queries": int(result.queries.sum()),
            "seconds": seconds,
            "images_per_s": n / seconds if seconds > 0 else float("nan"),
            "rejected": int(rejected.sum()),
        }
        return result

    # ------------------------------------------------------------------
    def _check_classes(
        self, n: int, labels: object, targets: object | None, ids: object | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Labels, targets and ids as CPU int64 ``(n,)`` tensors, or a one-line error naming the bad one."""
        labels_t = _labels("labels", labels, n)
        if self.targeted and targets is None:
            raise ConfigError("targets: required when targeted is true")
        if not self.targeted and targets is not None:
            raise ConfigError("targets: given but targeted is false; pass targeted=True or drop targets")
        targets_t = None if targets is None else _labels("targets", targets, n)
        if targets_t is not None and n and bool((targets_t == labels_t).any()):
            row = int((targets_t == labels_t).nonzero()[0])
            raise DataError(f"targets: row {row} targets its own label {int(labels_t[row])}; use another class")
        ids_t = torch.arange(n, dtype=torch.long) if ids is None else _labels("ids", ids, n)
        if n and bool((ids_t < 0).any()):
            raise DataError("ids: must be >= 0")
        return labels_t, targets_t, ids_t

    def _probe(self, probe: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> None:
        """One forward pass on the first images: the output's shape, its kind, and that the classes exist."""
        if probe.shape[0] == 0:
            return
        with torch.inference_mode():
            out = self.model(probe.to(self.device, torch.float32))
        if out.dim() != 2 or out.shape[0] != probe.shape[0]:
            raise DataError(f"model: expected outputs of shape (N, K); got {tuple(out.shape)} for N={probe.shape[0]}")
        if self.output == "auto":
            self.model_output = "probabilities" if looks_like_probabilities(out) else "logits"
        num = out.shape[1]
        for key, t in (("labels", labels), ("targets", targets)):
            if t is not None and bool(((t < 0) | (t >= num)).any()):
                raise DataError(f"{key}: values must be class indices in [0, {num - 1}] for this model")

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable float32 logits; ``log p`` (p clamped to float32's smallest normal) for probabilities."""
        out = self.model(x).float()
        return torch.log(out.clamp_min(TINY)) if self.model_output == "probabilities" else out

    def _gradient(self, x: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient ``(b, C, H, W)`` of the summed cross-entropy of class ``cls`` ``(b,)`` at ``x``, and the
        rows whose output was finite ``(b,)``; rows with a non-finite output get a zero gradient."""
        x = x.detach().requires_grad_(True)
        logits = self._logits(x)
        finite = torch.isfinite(logits).all(1)
        loss = F.cross_entropy(logits, cls, reduction="sum")  # a sum: each row's gradient is its own
        (grad,) = torch.autograd.grad(loss, x)
        grad = torch.where(finite[:, None, None, None], torch.nan_to_num(grad, nan=0.0), 0.0)
        return grad, finite

    def _start(self, x0: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The first iterate: ``x0``, or with ``random_start`` ``x0 + U(-eps, eps)`` clipped to [0, 1].

        Each image's noise comes from a CPU ``torch.Generator`` seeded with its stream key
        (:func:`onepixel.attack.rng.image_keys` of ``seed`` and its id), so it does not depend
        on ``batch_size``, the device or the other images.
        """
        if not self.random_start:
            return x0
        noise = torch.empty(x0.shape, dtype=torch.float32)
        for row, key in enumerate(keys.tolist()):
            noise[row] = torch.rand(x0.shape[1:], generator=torch.Generator().manual_seed(int(key)))
        return (x0 + (2 * noise.to(x0.device) - 1) * self.eps).clamp_(0, 1)

    def _attack_batch(
        self, x0: torch.Tensor, cls: torch.Tensor, keys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``steps`` signed-gradient steps of size ``alpha`` from :meth:`_start`, each projected onto the
        eps-ball of ``x0`` and [0, 1]: the float adversarial batch and its non-finite output counts ``(b,)``."""
        sign = -1.0 if self.targeted else 1.0  # targeted: descend the target's loss
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(self.device.type, enabled=False):
            x0, cls = x0.clone(), cls.to(x0.device)  # normal tensors, also when the caller is in inference mode
            rejected = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
            x = self._start(x0, keys)
            for _ in range(self.steps):
                grad, finite = self._gradient(x, cls)
                rejected += (~finite).long()
                x = x.detach() + sign * self.alpha * grad.sign()
                x = torch.minimum(torch.maximum(x, x0 - self.eps), x0 + self.eps).clamp_(0, 1)
        return x.detach(), rejected

    def _result(
        self,
        clean: torch.Tensor,
        adv: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        rejected: torch.Tensor,
    ) -> AttackResult:
        """The :class:`AttackResult` of uint8 ``adv``: re-evaluated alone in float32, autocast off."""
        n = clean.shape[0]
        scorer = Classifier(self.model, self.model_output or "logits", self.device, self.batch_size)
        with torch.autocast(self.device.type, enabled=False):
            logits_clean, logits_adv = scorer.logits(clean), scorer.logits(adv)
        num = logits_adv.shape[1] if n else 0
        logits_clean, logits_adv = logits_clean.reshape(n, num), logits_adv.reshape(n, num)
        adv_class = logits_adv.argmax(1) if n else torch.zeros(0, dtype=torch.long)
        finite = torch.isfinite(logits_adv).all(1)
        hit = adv_class == targets if targets is not None else adv_class != labels
        xs, ys, color = largest_change(clean, adv)
        per_image = torch.full((n,), self.steps, dtype=torch.long)
        return AttackResult(
            success=hit & finite,
            queries=per_image,
            generations=per_image.clone(),
            pixel_x=xs,
            pixel_y=ys,
            color=color,
            true_class=labels,
            target_class=targets if targets is not None else torch.full_like(labels, -1),
            adv_class=adv_class,
            prob_clean=torch.softmax(logits_clean, 1),
            prob_adv=torch.softmax(logits_adv, 1),
            adversarial=adv,
            rejected_candidates=rejected,
        )


_SHAPES_AND_RESULT = """
    Shapes: images ``(N, C, H, W)``, uint8 in [0, 255] or float in [0, 1]; labels and
    targets ``(N,)``. The model takes float32 images in [0, 1] (normalisation inside
    the model) and returns ``(N, K)`` logits or probabilities (``output``, as
    :class:`~onepixel.attack.OnePixelAttack`: ``"auto"`` decides on the first clean
    images). The loss is the cross-entropy of the logits; for a model returning
    probabilities ``p`` it is the cross-entropy of ``log p`` (``p`` clamped to float32's
    smallest normal number), i.e. ``-log p(class)``, the same loss as its twin that
    returns logits. Gradients are taken in float32 (autocast off) on ``device``, in
    batches of ``batch_size`` images, with the model in eval mode (each submodule's
    training flag is restored afterwards; parameters get no ``.grad``). A row whose
    output has a NaN or an infinity gets a zero gradient for that step and is counted
    in ``rejected_candidates``.

    :meth:`run` returns an :class:`~onepixel.attack.AttackResult` of N rows (CPU):

    * ``adversarial``: ``(N, C, H, W)`` uint8, ``round(x_adv * 255)`` clipped to
      ``[clean - q, clean + q]`` and ``[0, 255]``, ``q = floor(eps * 255)``
      (:func:`quantise`); float images are first converted with ``round(x * 255)``;
    * ``success``, ``adv_class``, ``prob_clean``, ``prob_adv``: re-evaluated on those
      uint8 images in float32 (as the DE attack's verdict);
    * ``queries`` and ``generations``: the forward+backward passes per image (``steps``);
    * ``pixel_x``, ``pixel_y`` ``(N, 1)``, ``color`` ``(N, 1, C)``: the pixel whose change
      ``sum_c |adv - clean|`` is largest (first in row-major order on ties) and its new
      colour. An L-inf attack changes up to every pixel: this pixel is **only the
      centre** the propagation-map summaries (``mass_distance``) measure from, not
      "the attacked pixel"; :func:`perturbation_sizes` gives the L-inf / L2 / L0 sizes;
    * ``rejected_candidates``: steps whose model output had a NaN or an infinity.

    Calling the attack, ``attack(images, labels)``, returns the adversarial images
    torchattacks-style, in the dtype and on the device of ``images``: for uint8 images
    :meth:`run`'s ``adversarial``; for float images the float iterate itself
    (:meth:`perturb`: in the float eps-ball and [0, 1], not rounded to 8 bits).
    After :meth:`run`, ``last_stats`` holds ``queries``, ``seconds``, ``images_per_s``
    and ``rejected``.
"""


class FGSM(_GradientAttack):
    """Fast gradient sign method, L-inf, white-box: ``x_adv = clip(x + eps * sign(grad_x loss), 0, 1)``.

    Goodfellow, Shlens & Szegedy, *Explaining and Harnessing Adversarial Examples*
    (ICLR 2015, arXiv 1412.6572). Untargeted: ascend the cross-entropy of the label;
    targeted: descend that of the target, ``x - eps * sign(grad)``. One forward and
    one backward pass per image (``queries = generations = 1``).

    Args:
        model: maps float32 images ``(N, C, H, W)`` in [0, 1] to ``(N, K)`` logits or probabilities.
        eps: L-inf radius in [0, 1] units, in (0, 1] (default 8/255).
        targeted: targeted attack (``run`` then needs ``targets``).
        batch_size: images per forward/backward pass (default 128).
        device: where to run; default the model's device (the model is moved there).
        output: ``"logits"``, ``"probabilities"`` or ``"auto"`` (default).
    {shapes}
    Examples::

        >>> import torch
        >>> from torch import nn
        >>> from onepixel.attack import FGSM
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
        >>> images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
        >>> labels = model(images.float() / 255).argmax(1)
        >>> result = FGSM(model, eps=8 / 255).run(images, labels)
        >>> result  # doctest: +ELLIPSIS
        AttackResult(n=4, success=.../4 (... %), pixels=1, channels=3, image=8x8, mean queries=1)
        >>> int((result.adversarial.long() - images.long()).abs().max())  # in the eps-ball, in 8-bit levels
        8
        >>> adv = FGSM(model)(images.float() / 255, labels)  # torchattacks-style on floats: not rounded
        >>> adv.dtype, bool(((adv - images / 255).abs() <= 8 / 255 + 1e-6).all())
        (torch.float32, True)
    """

    options = ("eps",)

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        targeted: bool = False,
        batch_size: int = 128,
        device: str | torch.device | None = None,
        output: str = "auto",
    ) -> None:
        super().__init__(model, eps, eps, 1, False, targeted, 0, batch_size, device, output)


class PGD(_GradientAttack):
    """Projected gradient descent, L-inf, white-box, with a random start.

    Madry, Makelov, Schmidt, Tsipras & Vladu, *Towards Deep Learning Models Resistant
    to Adversarial Attacks* (ICLR 2018, arXiv 1706.06083). From ``x_0 = x`` (or, with
    ``random_start``, ``x + U(-eps, eps)`` clipped to [0, 1]), ``steps`` times:
    ``x_{t+1} = clip(proj_eps(x_t + alpha * sign(grad_x loss(x_t))), 0, 1)`` where
    ``proj_eps`` clips to ``[x - eps, x + eps]``; targeted: ``- alpha * sign(grad)`` of
    the target's loss. All steps run (no early stop): ``queries = generations = steps``.
    The random start of each image comes from a ``torch.Generator`` seeded with the
    image's key of ``(seed, id)`` (:func:`onepixel.attack.rng.image_keys`), drawn on the
    CPU: results are deterministic for a seed and do not depend on ``batch_size``, the
    device's random state or the other images.

    Args:
        model: maps float32 images ``(N, C, H, W)`` in [0, 1] to ``(N, K)`` logits or probabilities.
        eps: L-inf radius in [0, 1] units, in (0, 1] (default 8/255).
        alpha: step size in [0, 1] units, > 0 (default 2/255).
        steps: iterations, >= 1 (default 10).
        random_start: start from a uniform point of the eps-ball (default True).
        targeted: targeted attack (``run`` then needs ``targets``).
        seed: seed of the random start (>= 0, default 0).
        batch_size: images per forward/backward pass (default 128).
        device: where to run; default the model's device (the model is moved there).
        output: ``"logits"``, ``"probabilities"`` or ``"auto"`` (default).
    {shapes}
    Examples::

        >>> import torch
        >>> from torch import nn
        >>> from onepixel.attack import PGD, perturbation_sizes
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
        >>> images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
        >>> labels = model(images.float() / 255).argmax(1)
        >>> attack = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, seed=0)
        >>> result = attack.run(images, labels)
        >>> result  # doctest: +ELLIPSIS
        AttackResult(n=4, success=.../4 (... %), pixels=1, channels=3, image=8x8, mean queries=10)
        >>> sizes = perturbation_sizes(images, result.adversarial)
        >>> sizes.linf.tolist(), bool((sizes.perturbed_pixels > 1).all())  # dense, within 8 levels
        ([8, 8, 8, 8], True)
        >>> torch.equal(attack.run(images, labels).adversarial, result.adversarial)  # seeded
        True
    """

    options = ("eps", "alpha", "steps", "random_start", "seed")

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        random_start: bool = True,
        targeted: bool = False,
        seed: int = 0,
        batch_size: int = 128,
        device: str | torch.device | None = None,
        output: str = "auto",
    ) -> None:
        super().__init__(model, eps, alpha, steps, random_start, targeted, seed, batch_size, device, output)


for _cls in (FGSM, PGD):
    _cls.__doc__ = (_cls.__doc__ or "").replace("    {shapes}\n", _SHAPES_AND_RESULT)
