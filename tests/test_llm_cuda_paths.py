"""The GPU code paths, checked as far as a CPU-only machine can check them.

What runs here: the sampling noise is drawn by a generator created on the logits' device (on CUDA a
CPU generator's noise subtracted from CUDA logits raised a device mismatch), seeded per (row, step),
and gives the Gumbel-max draw it did before; prepacking for oneDNN leaves layers that are not on the
CPU alone. What cannot run here: the same calls with CUDA tensors (the decoder, the DPO reference
pass, QLoRA with paged 8-bit AdamW, two GPUs); `scripts/gpu-check.sh` runs those on a GPU machine.
The `meta` device below stands in only for "some device that is not the CPU" in a device filter,
not for CUDA.
"""
from __future__ import annotations

import pytest
import torch

from bezoar.llm.continuous import _sample
from bezoar.llm.protocol import Sampling


@pytest.fixture
def generators(monkeypatch) -> list:
    """Records the device of every torch.Generator created (and still creates it)."""
    made, real = [], torch.Generator

    def spy(*args, **kwargs):
        made.append(torch.device(kwargs.get("device", args[0] if args else "cpu")))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "Generator", spy)
    return made


def test_sampling_noise_comes_from_a_generator_on_the_logits_device(generators):
    logits = torch.randn(49152, generator=torch.Generator().manual_seed(0))
    sampling = Sampling(temperature=0.8, top_p=0.95)
    generators.clear()
    token = _sample(logits, sampling, seed=7, step=3)
    assert generators == [logits.device]
    assert token == _sample(logits.clone(), sampling, seed=7, step=3)  # seeded by (row, step)

    # The draw itself: Gumbel-max over the nucleus with noise from the (seed, step) stream.
    from bezoar.llm.continuous import _nucleus

    scores = _nucleus(logits / 0.8, 0.95)
    noise = torch.rand(scores.shape[0], generator=torch.Generator(device=scores.device).manual_seed(7 + 3 * 1_000_003))
    assert token == int((scores - torch.log(-torch.log(noise.clamp_min(1e-20)))).argmax())


def test_sampling_follows_the_distribution():
    """Two tokens with probabilities 0.75 / 0.25: the per-step streams reproduce them."""
    logits = torch.full((8,), -1e9)
    logits[2], logits[5] = torch.log(torch.tensor(0.75)), torch.log(torch.tensor(0.25))
    draws = [_sample(logits, Sampling(temperature=1.0), seed=1, step=s) for s in range(2000)]
    assert set(draws) == {2, 5}
    assert abs(draws.count(2) / len(draws) - 0.75) < 0.04


def test_prepack_leaves_layers_off_the_cpu_alone():
    from bezoar.llm.prepack import PackedLinear, pack_linear_weights

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64, device="meta"))
    if not torch.backends.mkldnn.is_available():
        pytest.fail("this PyTorch build has no oneDNN: prepack cannot be checked")
    assert pack_linear_weights(model) == 1
    assert isinstance(model[0], PackedLinear) and type(model[1]) is torch.nn.Linear
