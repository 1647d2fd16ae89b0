import pytest
import torch

from ctrlab.data.feature_map import FeatureMap

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def cat_map() -> FeatureMap:
    """Categorical-only map (vocab sizes include pad and OOV)."""
    return FeatureMap.from_fields({"user": 7, "item": 11, "ctx": 5})


@pytest.fixture
def mixed_map() -> FeatureMap:
    """Every kind of field: categorical, numeric, a shared and an own-vocab sequence, a dense vector."""
    return FeatureMap.from_fields(
        {"user": 7, "item": 11, "ctx": 5},
        numeric=["price", "age"],
        sequences={"hist": (4, "item"), "tags": (3, 9)},
        dense={"img": 6},
    )
