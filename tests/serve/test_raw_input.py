"""Raw input at serving and in `ctrlab predict` goes through the data layer's reader and tokens:
id columns score the same as text, Int64 or Float64 (issue 14.5); a trailing blank line in a
predict file is not a row (issue 14.20)."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ctrlab import api
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


def test_predict_file_with_trailing_blank_line_gives_one_score_per_row(frappe_export, tmp_path):
    run = frappe_export[0]
    dcfg = api.load_run(run)[2]
    raw = pl.read_csv(dcfg.resolve("test"), infer_schema=False).head(100).drop("label")
    path = tmp_path / "in.csv"
    path.write_text(raw.write_csv() + "\n")  # 100 rows and a blank line
    out = tmp_path / "scores.csv"
    probs = api.predict(run, path, out)
    assert len(probs) == 100 and pl.read_csv(out).height == 100
