import inspect

import pytest

from ctrlab.models import CTRModel, create, default_hparams, get_model_class, list_models

MODELS = ["LR", "FM", "DNN", "DeepFM", "DCNv2", "FinalMLP", "WideDeep", "DCN", "xDeepFM", "IPNN", "AutoInt", "AutoIntPlus", "FCN", "DCNv3", "ECN", "LCN", "FGCNN"]


def test_all_registered():
    assert set(MODELS) <= set(list_models())


@pytest.mark.parametrize("name", ["finalmlp", "FinalMLP", "FINALMLP"])
def test_create_case_insensitive(cat_map, name):
    m = create(name, cat_map)
    assert type(m).__name__ == "FinalMLP" and isinstance(m, CTRModel)


def test_unknown_hparam_is_named(cat_map):
    with pytest.raises(ValueError, match="hiden_units"):
        create("DNN", cat_map, hiden_units=[8])


@pytest.mark.parametrize("name", MODELS)
def test_hparams_have_defaults_and_docs(name):
    cls = get_model_class(name)
    params = [p for k, p in inspect.signature(cls.__init__).parameters.items() if k not in ("self", "feature_map")]
    assert all(p.default is not inspect.Parameter.empty for p in params)
    hp = default_hparams(name)
    assert hp["embedding_regularizer"] == 0.0 and hp["net_regularizer"] == 0.0 and hp["embedding_dim"] == 10
    for k in hp:
        assert k in cls.__doc__, f"{name} docstring does not mention {k}"


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_roundtrip_through_safetensors(mixed_map, name):
    """The API saves ``state_dict()`` with safetensors: no shared tensors, and weights reload exactly."""
    import torch
    st = pytest.importorskip("safetensors.torch")

    from .synthetic import random_batch

    a, b = create(name, mixed_map), create(name, mixed_map)
    blob = st.save({k: v.contiguous() for k, v in a.state_dict().items()})
    b.load_state_dict(st.load(blob))
    a.eval()
    b.eval()
    batch = random_batch(mixed_map)
    torch.testing.assert_close(a(batch)["logit"], b(batch)["logit"])
