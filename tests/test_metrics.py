import kornia
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim
from torch import nn

from advml.data import TensorImageDataset
from advml.errors import InputError
from advml.metrics import accuracy, detection, linf, psnr, ssim, stealth


@pytest.fixture
def pair(sample):
    clean, _ = sample.test.get_batch(torch.arange(6))
    noisy = (clean + 0.03 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return clean, noisy


def test_psnr_matches_scikit_image(pair):
    clean, noisy = pair
    ours = psnr(clean, noisy)
    ref = [sk_psnr(c.numpy(), n.numpy(), data_range=1.0) for c, n in zip(clean, noisy)]
    assert np.allclose(ours.numpy(), ref, atol=1e-4)


def test_ssim_matches_kornia_and_scikit_image(pair):
    clean, noisy = pair
    ours = ssim(clean, noisy)
    # kornia computes the same reflect-padded map independently of torchmetrics
    assert torch.allclose(ours.double(), kornia.metrics.ssim(noisy.double(), clean.double(), 11).mean((1, 2, 3)),
                          atol=1e-5)
    # scikit-image (Wang et al.'s Gaussian variant) averages the valid region only: equal up to the border
    big_c = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    big_n = (big_c + 0.05 * torch.randn(big_c.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    ref = [sk_ssim(c.permute(1, 2, 0).double().numpy(), n.permute(1, 2, 0).double().numpy(), data_range=1.0,
                   channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
           for c, n in zip(big_c, big_n)]
    assert np.allclose(ssim(big_c, big_n).numpy(), ref, atol=2e-3)
    assert float(ssim(clean, clean).min()) == pytest.approx(1.0)


def test_ssim_sees_a_corner_patch():
    x = torch.full((1, 3, 32, 32), 0.5)
    y = x.clone()
    y[..., 29:, 29:] = 1.0
    assert float(ssim(x, y)) < 0.99


def test_linf_and_psnr_by_hand():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0, 0, 0, 0] = 1.0  # one pixel of 48 off by 1: MSE = 1/48
    b[1] += 10 / 255
    assert linf(a, b).tolist() == pytest.approx([255.0, 10.0])
    assert float(psnr(a, b)[0]) == pytest.approx(10 * np.log10(48), abs=1e-4)
    s = stealth(a, b)
    assert s["linf"] == pytest.approx(132.5)
    assert stealth(a, a)["psnr"] is None  # unchanged images have infinite PSNR and are left out


def test_accuracy_of_a_known_rule():
    class Brightness(nn.Module):  # predicts class 1 for bright images, 0 for dark
        def forward(self, x):
            m = x.mean((1, 2, 3))
            return torch.stack([0.5 - m, m - 0.5], 1)

    x = torch.cat([torch.full((3, 3, 4, 4), 0.9), torch.full((5, 3, 4, 4), 0.1)])
    labels = torch.tensor([1, 1, 0, 0, 0, 0, 0, 1])  # 6 of 8 follow the rule
    model = Brightness()
    model.dummy = nn.Parameter(torch.zeros(1))
    assert accuracy(model, TensorImageDataset(x, labels, ["dark", "bright"])) == pytest.approx(0.75)


def test_detection_precision_recall_by_hand():
    pred = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool)
    true = torch.tensor([1, 1, 0, 1, 0, 0], dtype=torch.bool)
    assert detection(pred, true) == {"detect_precision": pytest.approx(2 / 3), "detect_recall": pytest.approx(2 / 3)}


def test_metric_inputs_are_checked():
    a = torch.rand(2, 3, 8, 8)
    with pytest.raises(InputError, match="shape"):
        psnr(a, torch.rand(2, 3, 8, 7))
    with pytest.raises(InputError, match="float"):
        psnr((a * 255).to(torch.uint8), a)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        ssim(a * 255, a)
