"""`alexatm-jax show-data`: decoded examples, then one JSON line of statistics."""

import json

from alexatm_jax import cli


def test_show_data_stats(capsys):
    assert cli.main(["show-data", "--mixture", "alexatm_demo", "--num", "60", "--stats", "--inputs-length", "64",
                     "--targets-length", "64", "--seed", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("--- example 0: objective=") and any(l.startswith("inputs: ") for l in out)
    stats = json.loads(out[-1])
    assert stats["examples"] == 60
    assert set(stats["objective_rates"]) <= {"denoise", "clm"}
    assert 0.2 <= stats["clm_prefix_fraction"]["min"] <= stats["clm_prefix_fraction"]["max"] <= 0.8
    assert 0.1 < stats["denoise_dropped_fraction"] < 0.2


def test_show_data_unknown_mixture(capsys):
    assert cli.main(["show-data", "--mixture", "no_such_mixture", "--num", "2"]) == 2
    assert "no seqio task or mixture named 'no_such_mixture'" in capsys.readouterr().err
