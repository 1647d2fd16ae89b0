import inspect

import pytest

from ctrlab.models import CTRModel, create, default_hparams, get_model_class, list_models

MODELS = ["LR", "FM", "DNN", "DeepFM", "DCNv2", "FinalMLP", "WideDeep", "DCN", "xDeepFM", "IPNN", "AutoInt", "AutoIntPlus", "FCN", "DCNv3", "ECN", "LCN", "FGCNN", "SDIM", "SharedBottom", "MMoE", "ESMM", "QIN", "TabR"]


def test_all_registered():
    assert set(MODELS) <= set(list_models())


@pytest.mark.parametrize("name", ["finalmlp", "FinalMLP", "FINALMLP"])
def test_create_case_insensitive(cat_map, name):
    m = create(name, cat_map)
    assert type(m).__name__ == "FinalMLP" and isinstance(m, CTRModel)


def test_unknown_hparam_is_named(cat_map):
    with pytest.raises(ValueError, match="hiden_units"):
        create("DNN", cat_map, hiden_units=[8])


def test_wrong_hparam_type_is_named_by_create(cat_map):
    """The registry checks values against the model's annotations, so ``create`` (the Python API,
    not only the CLI) names the key instead of failing inside a layer."""
    from ctrlab.config import ConfigError

    with pytest.raises(ConfigError, match=r"model_params\.hidden_units \(DNN\): expected a list, got 'abc'"):
        create("DNN", cat_map, hidden_units="abc")
    create("DNN", cat_map, hidden_units=[8, 4])  # a YAML list for a tuple default is fine


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

    from .synthetic import random_batch, with_labels_for

    mixed_map = with_labels_for(get_model_class(name), mixed_map)  # ESMM: clicks and conversions
    a, b = create(name, mixed_map), create(name, mixed_map)
    # training rows (TabR keeps them as retrieval candidates, in buffers the fresh model `b` lacks); a no-op
    # for the other models
    a.attach_training_data({k: v.numpy() for k, v in random_batch(mixed_map, batch_size=64, seed=3).items()})
    blob = st.save({k: v.contiguous() for k, v in a.state_dict().items()})
    b.load_state_dict(st.load(blob))
    a.eval()
    b.eval()
    batch = random_batch(mixed_map)
    torch.testing.assert_close(a(batch)["logit"], b(batch)["logit"])


# ---- issue 14.16: defaults handed out as copies, required hyperparameters, **kwargs, plugins --------
import sys  # noqa: E402
import textwrap  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from ctrlab.models import registry  # noqa: E402


@pytest.fixture
def clean_registry(monkeypatch):
    """Models registered, plugins imported and CTRLAB_PLUGINS set by a test are gone after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    for name in ("_imported_specs", "_file_modules"):
        if hasattr(registry, name):
            monkeypatch.setattr(registry, name, dict(getattr(registry, name)))
    monkeypatch.delenv("CTRLAB_PLUGINS", raising=False)
    modules = set(sys.modules)
    yield registry
    for name in set(sys.modules) - modules:
        del sys.modules[name]


class _Tiny(CTRModel):
    def forward(self, batch):
        return {"logit": self.bias.expand(batch["cat"].shape[0])}


def test_default_hparams_are_copies_and_models_get_fresh_defaults(clean_registry, cat_map):
    """Appending to a default handed out by default_hparams (or inside a model's __init__) used to
    change the next model: the registry handed out the signature's own list."""

    class ListDefaultNet(_Tiny):
        """Hyperparameters: ``units=[4]``, ``embedding_dim=10``."""

        def __init__(self, feature_map, units: list = [4], embedding_dim: int = 10):  # noqa: B006
            super().__init__(feature_map)
            units.append(len(units))  # a model that edits its argument in place
            self.units = units
            self.bias = nn.Parameter(torch.zeros(1))

    clean_registry.register(ListDefaultNet)
    default_hparams("ListDefaultNet")["units"].append(99)
    assert default_hparams("ListDefaultNet")["units"] == [4]
    assert create("ListDefaultNet", cat_map).units == [4, 1]
    assert create("ListDefaultNet", cat_map).units == [4, 1]


def test_required_hyperparameter_is_accepted_and_named_when_missing(clean_registry, cat_map):
    class WidthNet(_Tiny):
        def __init__(self, feature_map, width: int, embedding_dim: int = 10):
            super().__init__(feature_map)
            self.width = width
            self.bias = nn.Parameter(torch.zeros(width))

    clean_registry.register(WidthNet)
    assert create("WidthNet", cat_map, width=3).width == 3
    assert "width" not in default_hparams("WidthNet")
    with pytest.raises(ValueError, match=r"WidthNet needs hyperparameter\(s\) \['width'\]"):
        create("WidthNet", cat_map)
    with pytest.raises(ValueError, match="wdth"):
        create("WidthNet", cat_map, width=3, wdth=3)


def test_kwargs_model_takes_any_hyperparameter(clean_registry, cat_map):
    class OptionsNet(_Tiny):
        def __init__(self, feature_map, **options):
            super().__init__(feature_map)
            self.options = options
            self.bias = nn.Parameter(torch.zeros(1))

    clean_registry.register(OptionsNet)
    assert create("OptionsNet", cat_map, depth=2, colour="red").options == {"depth": 2, "colour": "red"}


def _mutable(value) -> bool:
    if isinstance(value, (list, dict, set)):
        return True
    return isinstance(value, tuple) and any(_mutable(v) for v in value)


@pytest.mark.parametrize("name", MODELS)
def test_builtin_defaults_are_immutable(name):
    hp = registry.hyperparameters(name) if hasattr(registry, "hyperparameters") else None
    defaults = hp.defaults if hp else {k: p.default for k, p in inspect.signature(
        get_model_class(name).__init__).parameters.items() if p.default is not inspect.Parameter.empty}
    assert not [k for k, v in defaults.items() if _mutable(v)], f"{name} has mutable (list/dict) defaults"


def test_register_with_default_overrides(clean_registry, cat_map):
    """A subclass changes inherited defaults through the registry instead of re-declaring __init__."""
    class BaseNet(_Tiny):
        def __init__(self, feature_map, width: int = 1, depth: int = 2):
            super().__init__(feature_map)
            self.width, self.depth = width, depth
            self.bias = nn.Parameter(torch.zeros(1))

    @clean_registry.register(defaults={"width": 5})
    class WideNet(BaseNet):
        pass

    assert default_hparams("WideNet") == {"width": 5, "depth": 2}
    assert WideNet(cat_map).width == 5 and WideNet(cat_map, 7).width == 7 and WideNet(cat_map, depth=3).width == 5
    assert create("WideNet", cat_map, depth=4).width == 5 and BaseNet(cat_map).width == 1
    with pytest.raises(ValueError, match="heigth"):
        clean_registry.register(type("OtherNet", (BaseNet,), {}), defaults={"heigth": 1})


def test_autoint_plus_only_changes_a_default():
    from ctrlab.models.autoint import AutoIntPlus

    assert "def __init__" not in inspect.getsource(AutoIntPlus)
    assert default_hparams("AutoIntPlus") == {**default_hparams("AutoInt"), "hidden_units": (400, 400)}


PLUGIN_SOURCE = '''
"""A model defined outside ctrlab, registered by importing this file."""
import torch
from torch import nn

from ctrlab.models import CTRModel, register


@register
class {name}(CTRModel):
    """``logit = b`` (a constant).

    Hyperparameters: ``width`` (required), ``embedding_dim=10``.
    """

    def __init__(self, feature_map, width: int, embedding_dim: int = 10):
        super().__init__(feature_map)
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, batch):
        return {{"logit": self.bias[:1].expand(batch["cat"].shape[0])}}
'''


def test_plugin_file_from_ctrlab_plugins(clean_registry, tmp_path, monkeypatch, cat_map):
    path = tmp_path / "my_ctr_models.py"
    path.write_text(PLUGIN_SOURCE.format(name="EnvPluginNet"))
    with pytest.raises(ValueError, match="--import"):
        get_model_class("EnvPluginNet")  # the error says how to add a model
    monkeypatch.setenv("CTRLAB_PLUGINS", f"{path}")
    assert "EnvPluginNet" in list_models()
    assert create("EnvPluginNet", cat_map, width=2).bias.shape == (2,)
    assert registry.plugin_source(get_model_class("EnvPluginNet")) == str(path)
    assert registry.plugin_source(get_model_class("DNN")) is None


@pytest.mark.parametrize("spec, expected", [
    ("no_such_ctr_module", "no_such_ctr_module.*failed to import.*ModuleNotFoundError"),
    ("missing/models.py", "does not exist"),
])
def test_plugin_that_cannot_load_is_named(clean_registry, monkeypatch, spec, expected):
    monkeypatch.setenv("CTRLAB_PLUGINS", spec)
    with pytest.raises(registry.PluginError, match=expected):
        list_models()


def test_plugin_that_raises_on_import_is_named(clean_registry, tmp_path):
    bad = tmp_path / "broken_ctr_models.py"
    bad.write_text("raise RuntimeError('no GPU here')\n")
    with pytest.raises(registry.PluginError, match=r"broken_ctr_models.py.*--import.*RuntimeError: no GPU here"):
        registry.import_plugins([str(bad)])


def test_entry_point_in_an_installed_distribution(clean_registry, tmp_path, monkeypatch, cat_map):
    """A package that declares ``[ctrlab.models]`` entry points (here: a dist-info folder on sys.path)."""
    (tmp_path / "ep_ctr_models.py").write_text(PLUGIN_SOURCE.format(name="EntryPointNet")
                                               + PLUGIN_SOURCE.split("@register")[1].replace(
                                                   "class {name}", "class UnregisteredNet").replace("{{", "{").replace("}}", "}"))
    info = tmp_path / "ep_ctr_models-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-ctr-models\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[ctrlab.models]\nmodule = ep_ctr_models\nclass = ep_ctr_models:UnregisteredNet\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_state", "to load")
    assert {"EntryPointNet", "UnregisteredNet"} <= set(list_models())
    assert create("UnregisteredNet", cat_map, width=3).bias.shape == (3,)


def test_broken_entry_point_is_named(clean_registry, tmp_path, monkeypatch):
    info = tmp_path / "bad_ctr_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-ctr-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ctrlab.models]\nbad = no_such_ctr_package.models\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_state", "to load")
    for _ in range(2):  # not silently skipped on the next lookup either
        with pytest.raises(registry.PluginError, match="entry point bad.*bad-ctr-plugin.*ModuleNotFoundError"):
            list_models()


@pytest.mark.parametrize("name", MODELS)
def test_defaults_saved_as_lists_rebuild_the_same_model(mixed_map, name):
    """Run configs, metrics.json and manifests store the (tuple) defaults as YAML/JSON lists: lists are
    accepted and build the same model."""
    import json

    import yaml

    from .synthetic import with_labels_for

    saved = yaml.safe_load(yaml.safe_dump(json.loads(json.dumps(default_hparams(name)))))
    assert saved == json.loads(json.dumps(default_hparams(name)))
    mixed_map = with_labels_for(get_model_class(name), mixed_map)  # ESMM: clicks and conversions
    torch.manual_seed(0)
    a = create(name, mixed_map)
    torch.manual_seed(0)
    b = create(name, mixed_map, **saved)
    assert a.count_parameters() == b.count_parameters()
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
