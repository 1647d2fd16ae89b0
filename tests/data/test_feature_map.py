"""FeatureMap: JSON round trip written atomically under a name no other writer shares."""
from __future__ import annotations

from ctrlab.data.feature_map import CategoricalField, FeatureMap, NumericField


def test_save_never_touches_another_writers_temporary_file(tmp_path):
    """Issue 14.7: the temporary file was <path>.tmp for every writer; a second writer of the same
    path overwrote and renamed the first one's file."""
    fmap = FeatureMap(dataset="d", categorical=[CategoricalField("a", 5, 4)], numeric=[NumericField("x", 4)])
    path = tmp_path / "feature_map.json"
    theirs = tmp_path / "feature_map.json.tmp"
    theirs.write_text("another writer's half-written map")
    fmap.save(path)
    assert theirs.read_text() == "another writer's half-written map"
    assert FeatureMap.load(path).to_dict() == fmap.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feature_map.json", "feature_map.json.tmp"]
