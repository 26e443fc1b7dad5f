"""`corral cost`: the arithmetic on round numbers, the energy counters (RAPL read and wrapped, the declared-watts
fallback), the hardware file's errors, and the CLI on a tiny model and a tiny fine-tune run."""

from __future__ import annotations

import json

import pytest

from corral import cost
from corral.cost import Hardware, costs
from tests.helpers import assert_clean_error

# 3 years x 4380 working hours = 13140 h: $2628 -> $0.20/h; $438 a year / 4380 h -> $0.10/h; 0.5 kW x $0.20 -> $0.10/h
ROUND = Hardware(name="round", price_usd=2628, lifetime_years=3, utilization=0.5, watts=500,
                 electricity_usd_per_kwh=0.2, overhead_usd_per_year=438)


def test_the_arithmetic():
    assert ROUND.usd_per_hour() == pytest.approx(0.4)
    one_hour = costs(ROUND, tokens_per_s=1e6 / 3600)  # 1M tokens in exactly one hour
    assert one_hour["hours_per_1m_tokens"] == pytest.approx(1.0)
    assert one_hour["usd_per_1m_tokens"] == pytest.approx(0.4) and one_hour["kwh_per_1m_tokens"] == pytest.approx(0.5)
    # measured energy replaces the declared watts: 0.9 J a token is 0.25 kWh per 1M, $0.05 instead of $0.10
    measured = costs(ROUND, tokens_per_s=1e6 / 3600, joules_per_token=0.9)
    assert measured["kwh_per_1m_tokens"] == pytest.approx(0.25) and measured["usd_per_1m_tokens"] == \
        pytest.approx(0.35)
    twice = costs(ROUND, tokens_per_s=2e6 / 3600)
    assert twice["usd_per_1m_tokens"] == pytest.approx(0.2)


def test_rapl_is_read_across_a_wrap_and_declared_watts_are_the_fallback(tmp_path, monkeypatch):
    pkg = tmp_path / "intel-rapl:0"
    pkg.mkdir()
    (pkg / "energy_uj").write_text("999000000")
    (pkg / "max_energy_range_uj").write_text("1000000000")
    sub = tmp_path / "intel-rapl:0:0"  # a sub-domain (core): inside the package's count, not added again
    sub.mkdir()
    (sub / "energy_uj").write_text("5")
    monkeypatch.setattr(cost, "RAPL", str(tmp_path / "intel-rapl:*" / "energy_uj"))
    m = cost.EnergyMeter(watts=65)
    assert m.source == "rapl"
    (pkg / "energy_uj").write_text("2000000")  # wrapped: 1 J to the top, then 2 J
    assert m.joules() == pytest.approx(3.0)
    monkeypatch.setattr(cost, "RAPL", str(tmp_path / "none" / "energy_uj"))
    monkeypatch.setattr(cost, "_nvml_handles", lambda: [])
    d = cost.EnergyMeter(watts=100)
    assert d.source == "declared"
    import time

    time.sleep(0.05)  # joules follow the clock: 100 W
    assert 4.0 < d.joules() < 50.0


@pytest.mark.parametrize("yaml, needle", [("watts: -3\n", "watts must be a number >= 0"),
                                          ("wats: 3\n", "unknown field(s) ['wats']"),
                                          ("utilization: 2\n", "utilization must be in (0, 1]"),
                                          ("watts: [1\n", "not valid YAML")])
def test_a_bad_hardware_file_is_one_clear_error(tmp_path, capsys, yaml, needle):
    from corral.cli import main

    hw = tmp_path / "hw.yaml"
    hw.write_text(yaml)
    assert_clean_error(main(["cost", "--hardware", str(hw), "--tokens-per-s", "10"]), capsys.readouterr().err,
                       "--hardware", needle)


def test_the_cli_times_a_model_and_costs_a_finetune(tiny_chat, tmp_path, capsys):
    from corral.cli import main
    from corral.train.config import FinetuneConfig
    from corral.train.loop import finetune
    from tests.test_audit import fact_rows, write

    run = finetune(FinetuneConfig(model=str(tiny_chat), data=write(tmp_path / "d.jsonl", fact_rows(6, 0)),
                                  out=str(tmp_path / "run"), max_steps=3, batch_size=2, lora_r=4, augment=0,
                                  replay=0, eval_tasks=[], compile=False, precision="fp32", packing=False),
                   progress=False)
    hw = tmp_path / "hw.yaml"
    hw.write_text("name: round\nprice_usd: 2628\nlifetime_years: 3\nutilization: 0.5\nwatts: 500\n"
                  "electricity_usd_per_kwh: 0.2\noverhead_usd_per_year: 438\n")
    code = main(["cost", str(tiny_chat), "--hardware", str(hw), "--requests", "3", "--max-tokens", "6",
                 "--finetune", str(run), "--out", str(tmp_path / "cost")])
    out = capsys.readouterr().out
    assert code == 0 and "$0.4000 per working hour" in out and "GPT-4o mini" in out
    rep = json.loads((tmp_path / "cost" / "report.json").read_text())
    s = rep["served"]
    assert s["requests"] == 3 and s["output_tokens"] == 18 and s["output_tokens_per_s"] > 0  # random model: no EOS
    assert rep["serving"] == costs(ROUND, s["output_tokens_per_s"],
                                   s["joules_per_output_token"] if s["energy_source"] != "declared" else None)
    mix = s["prompt_tokens"] / 18
    assert rep["apis"][1]["usd_per_1m_output_at_this_mix"] == pytest.approx(0.60 + mix * 0.15)
    (ft,) = rep["finetune"]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert ft["steps"] == 3 and ft["seconds"] == last["train_s"] > 0 and last["trained_tokens"] > 0
    assert ft["usd"] == pytest.approx(last["train_s"] / 3600 * 0.4)
