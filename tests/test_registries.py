import pytest

from advml.backdoor import ATTACKS, build_attack
from advml.data import DATASETS, load_dataset
from advml.errors import ConfigError, UnknownNameError
from advml.models import MODELS, build_model


def test_registries_hold_the_documented_names():
    assert {"cifar10", "cifar100", "gtsrb", "imagefolder", "npz", "sample"} <= set(DATASETS.names())
    assert {"cnn_small", "resnet18_narrow", "preact_resnet18", "resnet18", "resnet50", "vgg16_bn", "densenet121",
            "mobilenet_v2", "inception_v3"} <= set(MODELS.names())
    assert "badnets" in ATTACKS
    assert all(desc for _, desc in DATASETS.describe() + MODELS.describe() + ATTACKS.describe())


@pytest.mark.parametrize("call, valid", [
    (lambda: load_dataset("cifar11"), "cifar10"),
    (lambda: build_model("resnet19", 10), "resnet18"),
    (lambda: build_attack("badnet"), "badnets"),
])
def test_unknown_names_list_valid_ones_and_suggest(call, valid):
    with pytest.raises(UnknownNameError) as e:
        call()
    assert f"did you mean {valid!r}" in str(e.value) and "valid:" in str(e.value)


def test_spec_arguments_are_checked():
    with pytest.raises(ConfigError, match="needs a path"):
        load_dataset("npz")
    with pytest.raises(ConfigError, match="takes no"):
        load_dataset("sample:foo")


def test_a_name_that_is_not_a_string_is_an_unknown_name_not_a_traceback():
    from advml.experiments import load_settings

    with pytest.raises(ConfigError, match="unknown attack"):
        load_settings(None, {"attack": {"name": [1]}})
    with pytest.raises(ConfigError, match="unknown defense"):
        load_settings(None, {"defense": {"name": {"a": 1}}})
