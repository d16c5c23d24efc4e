"""Latency prediction for unseen variants: a table of measured blocks (``table``), and its
honest validation against measurement, baselines and the noise floor (``validate``).

Importing this package does not import torch; building, walking and predicting do.
"""

from __future__ import annotations

from archbench.predict.table import (
    SCHEMA,
    SCHEMA_VERSION,
    Entry,
    LatencyTable,
    Prediction,
    Predictor,
    RowWork,
    Walk,
    build_table,
    check_table,
    fit_line,
    load_table,
    output_elements,
    plan_rows,
    plan_walks,
    predict_latency,
    predict_many,
    rank_by_prediction,
    spatial_key,
    table_from_json,
    table_from_result,
    walk_rows,
)

__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "Entry", "LatencyTable", "Prediction", "Predictor", "RowWork", "Walk", "build_table",
    "check_table", "fit_line", "load_table", "output_elements", "plan_rows", "plan_walks", "predict_latency",
    "predict_many", "rank_by_prediction", "spatial_key", "table_from_json", "table_from_result", "walk_rows",
]
