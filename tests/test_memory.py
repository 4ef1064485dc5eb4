"""Tests of onepixel.memory: one image's forward memory by hand, batches capped to batch_memory_mb."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from onepixel.errors import ConfigError
from onepixel.memory import LIVE_ACTIVATIONS, MIB, budgeted_batch, capped_batch, forward_bytes_per_image


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 8 * 8, 10)
    )


def test_forward_bytes_by_hand() -> None:
    net = _net().train()
    # input 3x16x16 float32; the largest tensor is the conv's 16x16x16 float32 output (the ReLU's is as large)
    expected = 3 * 16 * 16 * 4 + LIVE_ACTIVATIONS * 16 * 16 * 16 * 4
    assert forward_bytes_per_image(net, (3, 16, 16)) == expected
    assert net.training  # the probe runs in eval mode and gives the flag back


def test_forward_bytes_of_torchvision_resnet18_at_224() -> None:
    from torchvision.models import resnet18

    # the stem's 64x112x112 float32 output is the largest tensor of the network
    assert (
        forward_bytes_per_image(resnet18(), (3, 224, 224)) == 3 * 224 * 224 * 4 + LIVE_ACTIVATIONS * 64 * 112 * 112 * 4
    )


def test_capped_batch(capsys) -> None:
    assert capped_batch(8192, 10 * MIB, 0, "attack.batch_size") == 8192  # 0: no cap
    assert capped_batch(100, MIB, 4096, "attack.batch_size") == 100  # fits
    assert capsys.readouterr().err == ""
    assert capped_batch(8192, 10 * MIB, 4096, "attack.batch_size") == 409
    assert "attack.batch_size 8192 -> 409 images per forward pass" in capsys.readouterr().err
    assert capped_batch(64, 10 * MIB, 1, "vulnerability.batch_size") == 1  # never below one image
    with pytest.raises(ConfigError, match=r"^batch_memory_mb: -1 is not allowed; use an integer >= 0"):
        capped_batch(64, MIB, -1, "x")
    assert budgeted_batch(_net(), (3, 16, 16), 10**6, 1, "x") == MIB // (3 * 16 * 16 * 4 + 3 * 16 * 16 * 16 * 4)


def test_a_capped_attack_gives_the_same_results() -> None:
    from onepixel.attack.de import OnePixelAttack

    net = _net().eval()
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    labels = net(images.float() / 255).argmax(1)
    results = []
    for batch in (4096, budgeted_batch(net, (3, 16, 16), 4096, 1, "attack.batch_size")):
        attack = OnePixelAttack(net, population=40, generations=3, seed=0, batch_size=batch)
        results.append(attack.run(images, labels))
    assert budgeted_batch(net, (3, 16, 16), 4096, 1, "attack.batch_size") < 40  # fewer than one population
    for key in ("success", "adversarial", "pixel_x", "color", "queries"):
        a, b = getattr(results[0], key), getattr(results[1], key)
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)), key
