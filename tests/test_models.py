import pytest
import torch
from torch import nn

from advml.errors import ConfigError, DataError, UnsafeFileError
from advml.models import MODELS, ImageClassifier, build_model, load_weights
from advml.utils.io import save_tensors


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_takes_unit_range_images_and_exposes_features(name):
    torch.manual_seed(0)
    m = build_model(name, 7, image_size=32).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits, feats = m(x), m.features(x)
    assert logits.shape == (2, 7) and feats.shape == (2, m.feature_dim)
    assert torch.allclose(m.head(feats), logits, atol=1e-5)


def test_normalisation_lives_inside_the_model():
    m = build_model("cnn_small", 10, mean=(0.5, 0.25, 0.0), std=(0.5, 0.5, 1.0))
    x = torch.full((1, 3, 4, 4), 0.5)
    assert torch.allclose(m.normalize(x)[0, :, 0, 0], torch.tensor([0.0, 0.5, 0.5]))


def test_resnet18_narrow_width_is_settable():
    assert build_model("resnet18_narrow", 10).feature_dim == 128
    assert build_model("resnet18_narrow", 10, width=8).feature_dim == 64
    with pytest.raises(ConfigError, match="width"):
        build_model("resnet18_narrow", 10, width=0)
    with pytest.raises(ConfigError, match="unexpected keyword"):
        build_model("cnn_small", 10, width=8)
    with pytest.raises(ConfigError, match="pretrained"):
        build_model("cnn_small", 10, pretrained=True)


def test_vgg11_narrow_matches_the_vgg11_layout():
    m = build_model("vgg11_narrow", 10)
    assert m.feature_dim == 256 and build_model("vgg11_narrow", 10, width=8).feature_dim == 64
    convs = [c for c in m.backbone.modules() if isinstance(c, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128, 256, 256, 256, 256]  # VGG-11 (A) at 1/2 width
    # by hand: 3x3 convs without bias 9 * (3*32 + 32*64 + 64*128 + 128*128 + 128*256 + 3 * 256*256) = 2,304,864;
    # batch norm 2 * (32 + 64 + 128 + 128 + 4 * 256) = 2,752; head 256*10 + 10 = 2,570
    assert sum(p.numel() for p in m.parameters()) == 2_304_864 + 2_752 + 2_570
    with pytest.raises(ConfigError, match="width"):
        build_model("vgg11_narrow", 10, width=0)


def test_weights_roundtrip_through_safetensors(tmp_path):
    torch.manual_seed(1)
    a = build_model("resnet18_narrow", 10, width=4)
    save_tensors(tmp_path / "w.safetensors", a.state_dict())
    b = load_weights(build_model("resnet18_narrow", 10, width=4), tmp_path / "w.safetensors")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(a.eval()(x), b.eval()(x))
    with pytest.raises(DataError, match="do not fit"):
        load_weights(build_model("resnet18_narrow", 10, width=8), tmp_path / "w.safetensors")


def test_untrusted_torch_pickle_is_refused(tmp_path):
    planted = tmp_path / "pwned"

    class Plant:
        def __reduce__(self):
            return (open, (str(planted), "w"))

    torch.save({"w": Plant()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeFileError, match="evil.pt"):
        load_weights(build_model("cnn_small", 10), tmp_path / "evil.pt")
    assert not planted.exists()
    (tmp_path / "w.pkl").write_bytes(b"x")
    with pytest.raises(UnsafeFileError, match="unsupported"):
        load_weights(build_model("cnn_small", 10), tmp_path / "w.pkl")


def test_a_plain_user_module_works_with_metrics_and_trainer(sample):
    from advml.metrics import accuracy
    from advml.train import TrainConfig, Trainer

    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    Trainer(net, TrainConfig(epochs=1, progress=False, augment="none")).fit(sample.train.subset(range(256)))
    assert 0 <= accuracy(net, sample.test) <= 1
    assert not isinstance(net, ImageClassifier)


def test_the_transfer_families_have_their_layouts():
    """densenet_narrow = DenseNet-BC-40 (3 blocks of 6, growth 12), mobilenet_narrow keeps 32x32 in its stem,
    vit_tiny cuts 32x32 into 64 patches of 4x4 plus a class token; each trains (gradients reach the stem)."""
    dn = build_model("densenet_narrow", 10)
    blocks = [m for m in dn.backbone.modules() if type(m).__name__ == "_DenseBlock"]
    assert [len(b) for b in blocks] == [6, 6, 6] and blocks[0].denselayer1.conv2.out_channels == 12
    mb = build_model("mobilenet_narrow", 10)
    assert mb.backbone.features[0][0].stride == (1, 1) and mb.feature_dim == 1280
    vt = build_model("vit_tiny", 10)
    assert vt.backbone.vit.patch_size == 4 and vt.backbone.vit.seq_length == 65 and vt.feature_dim == 128
    for m in (dn, mb, vt):
        x = torch.rand(2, 3, 32, 32)
        m(x).sum().backward()
        assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("name,options", [("vit_tiny", {"patch_size": 5}), ("vit_tiny", {"heads": 3}),
                                          ("mobilenet_narrow", {"width_mult": 0}),
                                          ("densenet_narrow", {"growth_rate": 0}),
                                          ("densenet_narrow", {"depth": 3})])
def test_bad_family_options_are_one_line_errors(name, options):
    with pytest.raises(ConfigError):
        build_model(name, 10, **options)
