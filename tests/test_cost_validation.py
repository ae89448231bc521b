"""The cost model's check against published measurements: sourced data, pinned predictions, docs in sync."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.cost.validation import (
    DOCS,
    MEASUREMENTS,
    Measurement,
    docs_table,
    load_measurements,
    record,
    render_table,
    sig3,
    validate,
    vendor_mape,
)

CAT = load_catalog()
POINTS = load_measurements()
ROWS = validate(CAT)
UPDATE = "python -m terrazzo.cost.validation --update"


def test_enough_sourced_points_from_three_vendors():
    assert len(POINTS) >= 12
    assert len({p.vendor for p in POINTS}) >= 3
    assert all(n >= 3 for n, _ in vendor_mape(ROWS).values()), "each vendor needs a few points to say anything"
    ids = [p.id for p in POINTS]
    assert len(ids) == len(set(ids)), "ids must be unique: tests and docs find points by id"
    for p in POINTS:
        assert p.source.startswith("https://"), p.id
        assert CAT.device(p.device).vendor == p.vendor, f"{p.id}: {p.device} is not a {p.vendor} device"
        assert CAT.model(p.model).kind == "llm", p.id
        assert p.devices % (p.tp * p.pp) == 0, f"{p.id}: devices must be whole tp*pp replicas"


def test_a_point_without_a_url_or_with_an_unknown_field_is_rejected():
    good = yaml.safe_load(MEASUREMENTS.read_text())["measurements"][0]
    with pytest.raises(ValidationError, match="https URL"):
        Measurement.model_validate({**good, "source": "NVIDIA blog, 2024"})
    with pytest.raises(ValidationError):
        Measurement.model_validate({**good, "efficiency_factor": 0.9})  # no per-point knobs


@pytest.mark.parametrize("row", ROWS, ids=[r.point.id for r in ROWS])
def test_recorded_prediction_is_what_the_model_gives(row):
    recorded = row.point.predicted
    assert recorded is not None, f"{row.point.id} has no recorded prediction; run {UPDATE}"
    assert row.predicted == pytest.approx(recorded, rel=0.005), (
        f"{row.point.id}: the model now predicts {row.predicted:.4g}, {recorded:g} is recorded. If the change to "
        f"the model or catalog is intended, run {UPDATE} and explain the moved errors in docs/cost-model.md"
    )


def test_the_pin_notices_a_changed_efficiency_default():
    cat = load_catalog()
    decode = cat.efficiency["nvidia-gpu"]["decode"]
    cat.efficiency["nvidia-gpu"]["decode"] = decode.model_copy(update={"memory": decode.memory * 0.9})
    moved = [r for r in validate(cat) if abs(r.predicted / r.point.predicted - 1) > 0.005]  # type: ignore[operator]
    assert {r.point.vendor for r in moved} == {"nvidia"}


def test_docs_table_is_generated_from_the_data():
    text = DOCS.read_text()
    assert docs_table(text) == render_table(ROWS), f"docs/cost-model.md is stale; run {UPDATE}"
    lines = {line.split("|")[1].strip(): line for line in docs_table(text).splitlines() if line.startswith("| ")}
    for p in POINTS:
        assert p.id in lines, p.id
        assert f"| {p.predicted:,g} |" in lines[p.id], p.id
    assert UPDATE in text
    assert "## Efficiency defaults" in text  # efficiency.yaml cites docs/cost-model.md#efficiency-defaults


def test_update_records_predictions_and_rewrites_the_docs_table(tmp_path: Path):
    data, docs = tmp_path / "measurements.yaml", tmp_path / "cost-model.md"
    shutil.copy(MEASUREMENTS, data)
    docs.write_text("# doc\n<!-- validation-table:start -->\nold\n<!-- validation-table:end -->\ntail\n")
    data.write_text(data.read_text().replace(f"predicted: {POINTS[0].predicted:g}\n", "predicted: 1\n", 1))
    assert load_measurements(data)[0].predicted == 1
    record(validate(CAT, data), data, docs)
    assert [p.predicted for p in load_measurements(data)] == [sig3(r.predicted) for r in ROWS]
    assert docs_table(docs.read_text()) == render_table(ROWS)
    assert docs.read_text().endswith("tail\n")
