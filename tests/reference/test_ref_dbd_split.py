"""Reference port of DBD's schedule: SCLBD/DBD (commit d372ef4) `mixmatch_finetune.py` l. 167-203 (BackdoorBench
f02e353 `defense/dbd.py` l. 507-549 is the same loop): at the start of EVERY MixMatch epoch the current model
records each sample's SCE loss (`utils/trainer/simclr.py::poison_linear_record` l. 199-231: eval mode, the
record loader reads the *training* transform), `data/utils.py::get_semi_idx` (l. 117-131) keeps the
epsilon = 50 % lowest as labelled, and that epoch's MixMatch trains on this split. Also the pieces the issue
names: the warm-up (`poison_linear_train` l. 129-196: the backbone in train mode, features without gradient,
SCE, Adam; on the training transform, random crop reflect-padded by 4 + flip, config `transform.train`), the
SimCLR loss (`model/loss.py::SimCLRLoss` l. 7-55) and the projection head (`model/model.py::SelfModel` l. 5-27).
Float64, real images; advml's random views are recorded and replayed into the port, and the views'
distribution is checked against torchvision's RandomCrop(32, padding=4, padding_mode='reflect') + flip.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import advml.backdoor.defenses.contrastive as contrastive
import advml.backdoor.defenses.dbd as dbd
from advml.backdoor.defenses.base import DefenseContext
from advml.backdoor.defenses.contrastive import ContrastiveModel, ProbeSettings, contrastive_loss, train_probe

TOL = 1e-10


# --- the port -------------------------------------------------------------------------------------------
def official_sce(x, target, alpha=0.1, beta=1.0, num_classes=10):
    """model/loss.py SCELoss + RCELoss (l. 58-95), reduction 'none'."""
    ce = F.cross_entropy(x, target, reduction="none")
    prob = torch.clamp(F.softmax(x, dim=-1), min=1e-7, max=1.0)
    one_hot = torch.clamp(F.one_hot(target, num_classes).float(), min=1e-4, max=1.0)  # float32, as official
    rce = -1 * torch.sum(prob * torch.log(one_hot), dim=-1)
    return alpha * ce + beta * rce


def official_record_and_semi_idx(model, views, targets, ratio=0.5):
    """poison_linear_record (eval mode, on the training-transform views) then get_semi_idx."""
    model.eval()
    with torch.no_grad():
        loss = official_sce(model(views), targets).numpy()
    semi_idx = np.zeros(len(loss))
    semi_idx[loss.argsort()[: int(len(loss) * ratio)]] = 1
    return loss, semi_idx


def official_simclr_loss(features, temperature):
    """model/loss.py SimCLRLoss.forward, features (b, 2, dim) already normalised (SelfModel normalises)."""
    b = features.shape[0]
    mask = torch.eye(b, dtype=features.dtype)
    contrast_features = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor = features[:, 0]
    dot_product = torch.matmul(anchor, contrast_features.T) / temperature
    logits_max, _ = torch.max(dot_product, dim=1, keepdim=True)
    logits = dot_product - logits_max.detach()
    mask = mask.repeat(1, 2)
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(b).view(-1, 1), 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    return -((mask * log_prob).sum(1) / mask.sum(1)).mean()


# --- the tests ------------------------------------------------------------------------------------------
def test_the_split_is_recomputed_every_mixmatch_epoch_with_the_current_model(cifar, new_model, monkeypatch,
                                                                            as_dataset):
    x, y = cifar[0][::4], cifar[1][::4]  # 50 real images, 5 per class
    data = as_dataset(x, y)
    records, fits, unlabelled_sets = [], [], []
    real_losses, real_loss_fn = dbd.sample_losses, dbd.mixmatch_loss_fn

    def recording_losses(model, data, loss, batch_size=512, augment=None):
        views = []

        def seen(batch):
            out = augment(batch)
            views.append(out)
            return out

        scores = real_losses(model, data, loss, batch_size, seen)
        records.append({"model": copy.deepcopy(model), "views": torch.cat(views), "scores": scores})
        return scores

    class RecordingTrainer(dbd.Trainer):
        def fit(self, train, *args, **kwargs):
            before = copy.deepcopy(self.model.state_dict())
            history = super().fit(train, *args, **kwargs)
            fits.append({"before": before, "labelled": train[0][0].base.indices.clone()})
            return history

    def recording_loss_fn(unlabelled, *args, **kwargs):
        unlabelled_sets.append(unlabelled.indices.clone())
        return real_loss_fn(unlabelled, *args, **kwargs)

    monkeypatch.setattr(dbd, "sample_losses", recording_losses)
    monkeypatch.setattr(dbd, "Trainer", RecordingTrainer)
    monkeypatch.setattr(dbd, "mixmatch_loss_fn", recording_loss_fn)
    settings = {"encoder": {"epochs": 1, "batch_size": 25}, "warmup": {"epochs": 1, "batch_size": 16},
                "mixmatch": {"epochs": 3, "iterations": 2, "batch_size": 8, "lr": 0.01}}
    ctx = DefenseContext(new_model=lambda arch=None: new_model(), seed=1, device="cpu", progress=False)
    result = dbd.DBD(dbd.DBDSettings(**settings)).run(data, ctx)

    assert len(records) == len(fits) == 3  # one split per MixMatch epoch
    for e, (rec, fit, unl) in enumerate(zip(records, fits, unlabelled_sets)):
        for k, v in fit["before"].items():  # scored with the model this epoch starts from
            assert torch.equal(rec["model"].state_dict()[k], v), (e, k)
        loss, semi_idx = official_record_and_semi_idx(rec["model"], rec["views"], y)
        assert np.abs(loss - rec["scores"].numpy()).max() <= TOL
        assert torch.equal(fit["labelled"], torch.from_numpy(np.nonzero(semi_idx == 1)[0]))
        assert torch.equal(unl, torch.from_numpy(np.nonzero(semi_idx == 0)[0]))
        assert not torch.equal(rec["views"], x)  # scored on crop + flip views
    for a, b in zip(fits, fits[1:]):  # the model moved between two splits
        assert any(not torch.equal(a["before"][k], b["before"][k]) for k in a["before"])
    assert torch.equal(result.split.clean, fits[-1]["labelled"])


def test_the_warmup_equals_the_official_poison_linear_train(cifar, new_model, monkeypatch, as_dataset):
    x, y = cifar[0][::4], cifar[1][::4]
    data = as_dataset(x, y)
    views = []
    real = contrastive.crop_flip_augment

    def recording(size):
        aug = real(size)

        def apply(batch):
            out = aug(batch)
            views.append(out)
            return out

        return apply

    monkeypatch.setattr(contrastive, "crop_flip_augment", recording)
    ours = new_model()
    settings = dbd.DBDSettings().warmup.model_copy(update={"epochs": 2, "batch_size": 16})
    train_probe(ours, data, settings, lambda m, b: dbd.sce_loss(m(b.x), b.y), seed=3, progress=False)

    model = new_model()  # poison_linear_train with the same views, the same batch order (the Trainer's seed)
    model.head.reset_parameters()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
    generator, it = torch.Generator().manual_seed(3), iter(views)
    for _ in range(2):
        model.train()
        for idx in torch.randperm(len(y), generator=generator).split(16):
            inputs = next(it)
            with torch.no_grad():
                feature = model.features(inputs)
            loss = official_sce(model.head(feature), y[idx]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for k, v in ours.state_dict().items():
        if v.is_floating_point():
            assert (v - model.state_dict()[k]).abs().max() <= TOL, k
    bn = [k for k in ours.state_dict() if k.endswith("running_mean")]
    assert any(not torch.equal(ours.state_dict()[k], new_model().state_dict()[k]) for k in bn)  # BN moved


def test_crop_flip_views_have_torchvision_s_distribution():
    """Each view is reflect-pad-4(x)[i:i+32, j:j+32], flipped or not, i, j uniform in 0..8, flip p 0.5."""
    x = torch.rand(400, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.manual_seed(0)
    views = contrastive.crop_flip_augment((32, 32))(x)
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    found = []
    for v, p in zip(views, padded):
        hits = [(i, j, f) for i in range(9) for j in range(9) for f in (0, 1)
                if torch.equal(v, (p[:, i:i + 32, j:j + 32].flip(-1) if f else p[:, i:i + 32, j:j + 32]))]
        assert len(hits) == 1
        found.append(hits[0])
    i, j, f = np.array(found).T
    assert abs(f.mean() - 0.5) < 0.08 and abs(i.mean() - 4) < 0.4 and abs(j.mean() - 4) < 0.4
    assert set(i) == set(range(9)) and set(j) == set(range(9))


def test_simclr_loss_and_projection_head_equal_dbd_s(new_model):
    z = F.normalize(torch.randn(12, 2, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=-1)
    ours = contrastive_loss(z[:, 0], z[:, 1], temperature=0.5, base_temperature=0.5, anchors="first")
    assert abs(float(ours - official_simclr_loss(z, 0.5))) <= TOL
    settings = dbd.DBDSettings().encoder
    projection = ContrastiveModel(new_model(), settings.projection_dim, settings.projection_bn).projection
    assert [type(m) for m in projection] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert settings.anchor_views == "first" and ProbeSettings().train_bn is False
