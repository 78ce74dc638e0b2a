"""Reference port of D-ST's MCE classifier: SCLBD/Effective_backdoor_defense (commit 63fda0e) `ST/train_classifier.py`
`train` (l. 285-341: the encoder in eval mode without gradient, a fresh linear classifier, loss
CE(D_c) - 0.001 CE(D_p) per batch), its optimiser `ST/util.py::set_optimizer` (l. 114-119: SGD, momentum 0.9,
weight decay 0) and schedule `adjust_learning_rate` (l. 89-101): the README's command (`--epochs 10
--learning_rate 5 --batch_size 512`, no `--cosine`, no `--warm`) keeps lr 5 constant, the step decays at epochs
60/75/90 lying past its 10 epochs. Float64, real images; advml's random SupContrast views are recorded and
replayed into the port.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import advml.backdoor.defenses.contrastive as contrastive
from advml.backdoor.defenses.contrastive import train_probe
from advml.backdoor.defenses.dst import DSTSettings, mce_loss

TOL = 1e-10


def official_adjust_learning_rate(learning_rate, epoch, cosine=False, lr_decay_epochs=(60, 75, 90),
                                  lr_decay_rate=0.2, epochs=10):
    """ST/util.py l. 89-101."""
    lr = learning_rate
    if cosine:
        eta_min = lr * (lr_decay_rate**3)
        return eta_min + (lr - eta_min) * (1 + np.cos(np.pi * epoch / epochs)) / 2
    steps = np.sum(epoch > np.asarray(lr_decay_epochs))
    return lr * (lr_decay_rate**steps) if steps > 0 else lr


def official_mce(encoder, views, labels, flags, order, *, epochs, lr=5.0):
    """train_classifier.py main (l. 403-408) + train (l. 285-341) with the given views and batch order."""
    classifier = encoder.head  # reset already, as LinearClassifier starts fresh
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=0.9, weight_decay=0)
    it = iter(zip(views, order))
    lrs = []
    for epoch in range(1, epochs + 1):
        for group in optimizer.param_groups:
            group["lr"] = official_adjust_learning_rate(lr, epoch, epochs=epochs)
        lrs.append(optimizer.param_groups[0]["lr"])
        encoder.eval()
        classifier.train()
        for _ in range(len(order) // epochs):
            images, idx = next(it)
            with torch.no_grad():
                features = encoder.features(images)
            output = classifier(features.detach())
            clean_idx, poison_idx = torch.where(flags[idx] == 0)[0], torch.where(flags[idx] == 2)[0]
            loss = F.cross_entropy(output[clean_idx], labels[idx][clean_idx]) \
                - F.cross_entropy(output[poison_idx], labels[idx][poison_idx]) * 0.001
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return classifier, lrs


def test_mce_head_equals_the_official_classifier_training(cifar, new_model, monkeypatch, as_dataset):
    x, y = cifar[0][::4], cifar[1][::4]  # 50 real images
    is_poisoned = torch.zeros(50, dtype=torch.bool)
    is_poisoned[::5] = True  # the D_p part of D_c u D_p, as D-ST passes it
    data = as_dataset(x, y)
    views = []
    real = contrastive.two_view_augment

    class Recording(nn.Module):
        def __init__(self, augment):
            super().__init__()
            self.augment = augment

        def forward(self, batch):
            views.append(self.augment(batch))
            return views[-1]

    monkeypatch.setattr(contrastive, "two_view_augment", lambda size, blur_p=0.0: [Recording(real(size, blur_p))])
    settings = DSTSettings().classifier
    assert (settings.lr, settings.schedule, settings.weight_decay, settings.optimizer) == (5.0, "constant", 0.0, "sgd")
    epochs = 3
    ours = new_model()
    history = train_probe(ours, data, settings.model_copy(update={"epochs": epochs, "batch_size": 25}),
                          mce_loss(is_poisoned, 0.001), seed=5, progress=False)
    assert [h["lr"] for h in history] == [5.0] * epochs

    generator = torch.Generator().manual_seed(5)  # the Trainer's batch order
    order = [idx for _ in range(epochs) for idx in torch.randperm(50, generator=generator).split(25)]
    encoder = new_model()
    encoder.head.reset_parameters()
    flags = torch.where(is_poisoned, 2, 0)
    head, lrs = official_mce(encoder, views, y, flags, order, epochs=epochs)
    assert lrs == [5.0] * epochs
    assert (ours.head.weight - head.weight).abs().max() <= TOL
    assert (ours.head.bias - head.bias).abs().max() <= TOL
    for k, v in ours.backbone.state_dict().items():  # the encoder, BatchNorm statistics included, did not move
        assert torch.equal(v, new_model().backbone.state_dict()[k]), k
