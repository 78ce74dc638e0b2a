"""Reference port of the SD module's training: SCLBD/Effective_backdoor_defense (commit 63fda0e)
`train_attack_noTrans.py` (train_epoch l. 19-50; SGD 0.01, momentum 0.9, wd 5e-4, CosineAnnealingLR(T_max=100),
l. 94-95) then `finetune_attack_noTrans.py` (train_epoch l. 20-74, resuming the warm-up's model, optimiser and
scheduler, l. 118-126): the intra-class loss alone. The features are taken as BackdoorBench's `d-br.py` does
(`finetune_epoch` l. 136-189: the model with its linear layer dropped, one forward pass); EBD runs a second,
logging forward pass that moves BatchNorm's running statistics once more per batch. Float64, real images,
and the shuffling drawn from the same generator as advml's Trainer (its seed; the official DataLoader's
shuffle draws a randperm from torch's generator in the same way).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from advml.backdoor.defenses.sd import SDSettings, train_sd_model

TOL = 1e-10


def official_intra_loss(features, labels, num_classes):
    """finetune_attack_noTrans.py l. 39-54: class centres, L2-normalised, mean cosine similarity, diagonal 0."""
    centers = []
    for j in range(num_classes):
        j_idx = torch.where(labels == j)[0]
        if j_idx.shape[0] == 0:
            continue
        centers.append(torch.mean(features[j_idx], dim=0))
    centers = F.normalize(torch.stack(centers, dim=0), dim=1)
    similarity_matrix = torch.matmul(centers, centers.T)
    mask = torch.eye(similarity_matrix.shape[0], dtype=torch.bool)
    similarity_matrix = similarity_matrix.masked_fill(mask, 0.0)
    return torch.mean(similarity_matrix)


def official_sd_training(model, x, y, *, warmup_epochs, finetune_epochs, batch_size, seed):
    """The two official scripts in a row on one batch stream (shuffled per epoch)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(warmup_epochs + finetune_epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=generator).split(batch_size):
            inputs, labels = x[idx], y[idx]
            if epoch < warmup_epochs:  # train_attack_noTrans.py l. 30-34
                loss = F.cross_entropy(model(inputs), labels)
            else:  # finetune_attack_noTrans.py l. 33-58, features as d-br.py l. 157-158
                features = model.features(inputs).view(inputs.shape[0], -1)
                loss = official_intra_loss(features, labels, 10)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    return model


def test_sd_training_equals_the_official_scripts(cifar, new_model, as_dataset):
    x, y = cifar[0][::5], cifar[1][::5]  # 40 real images, 4 per class
    data = as_dataset(x, y)
    settings = SDSettings(warmup_epochs=2, finetune_epochs=3, batch_size=16)
    ours = train_sd_model(new_model(), data, settings, seed=7, progress=False)
    ref = official_sd_training(new_model(), x, y, warmup_epochs=2, finetune_epochs=3, batch_size=16, seed=7)
    theirs = ref.state_dict()
    for name, value in ours.state_dict().items():
        if value.is_floating_point():
            assert (value - theirs[name]).abs().max() <= TOL, name
    moved = {k: v for k, v in new_model().state_dict().items() if v.is_floating_point()}
    assert max((ours.state_dict()[k] - v).abs().max() for k, v in moved.items()) > 1e-3  # it trained


def test_the_ce_plus_intra_option_is_a_different_loss(cifar, new_model, as_dataset):
    x, y = cifar[0][::5], cifar[1][::5]
    data = as_dataset(x, y)
    official = train_sd_model(new_model(), data, SDSettings(warmup_epochs=1, finetune_epochs=1, batch_size=40),
                              progress=False)
    both = train_sd_model(new_model(), data, SDSettings(warmup_epochs=1, finetune_epochs=1, batch_size=40,
                                                         finetune_loss="ce+intra"), progress=False)
    assert (official.head.weight - both.head.weight).abs().max() > 1e-6  # CE moves the head; L_intra alone not
