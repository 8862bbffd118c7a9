"""A command run alone uses the settings the demo preset uses for the same step, so the quick tour's commands
and `experiment` do the same thing unless told otherwise."""
from __future__ import annotations

import pytest

from circuitdistill.distill.config import DistillConfig, MatchConfig
from circuitdistill.experiment.config import preset

DEMO = preset("demo")
MATCH_FIELDS = {"by": "match_by", "baseline": "match_baseline", "normalise": "match_normalise",
                "metric": "match_metric", "max_items": "match_items", "ablation_positions": "match_positions",
                "budget": "head_budget", "per_position_means": "per_position_means"}


@pytest.mark.parametrize("field,preset_field", MATCH_FIELDS.items())
def test_match_defaults_are_the_demo_presets(field, preset_field):
    assert MatchConfig.model_fields[field].default == getattr(DEMO, preset_field)


@pytest.mark.parametrize("field", ["lam", "estimator", "lam_reduction", "batch_size"])
def test_distill_defaults_are_the_demo_presets(field):
    assert DistillConfig.model_fields[field].default == getattr(DEMO, field)
