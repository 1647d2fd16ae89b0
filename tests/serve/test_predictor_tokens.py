"""Issue 14.5 at serving: a frame's id columns give the same tokens, hence the same scores, whether
they are text, Int64 or Float64 (pandas makes a Float64 column whenever a value is missing)."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ctrlab.data.readers import read_split
from ctrlab.serve.predictor import Predictor


@pytest.mark.parametrize("rows", [10, 300])  # the dict lookup (few rows) and the Polars expression
def test_integer_and_float_id_columns_score_like_text(frappe_export, rows):
    predictor = Predictor(frappe_export[1])
    dcfg = predictor.artifact.dataset_config
    frame = read_split(dcfg, dcfg.resolve("test"), predictor.columns).select(predictor.columns).head(rows)
    expected = predictor.predict_frame(frame)
    for dtype in (pl.Int64, pl.Float64):
        typed = frame.with_columns(pl.all().cast(dtype))
        np.testing.assert_array_equal(predictor.predict_frame(typed), expected, err_msg=str(dtype))
