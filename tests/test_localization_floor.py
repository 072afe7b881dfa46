"""The AAM boxes of a trained stage 1 land on the attributes' true regions far more often than chance
(issue 3): a small network trained for 500 steps on the embedded dataset, scored against the regions
that the synthetic records carry. Slowest test of the suite (90-140 s on 2 cores). Its configuration is
`benchmarks/localization_floor.py`'s, which reruns it for other seeds and settings (docs/performance.md,
"The test suite": the cheaper settings tried)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import localization_floor  # noqa: E402


def test_trained_aam_boxes_beat_chance(tmp_path):
    info = localization_floor.write_data(str(tmp_path / "data"))
    report = localization_floor.floor_report(localization_floor.floor_config(str(tmp_path / "work")), info)
    # Measured (hit rate minus chance, seed 0): mean +0.12, front +0.29, sleeves +0.155 on an avx512_bf16
    # machine; +0.112, +0.36, +0.17 on the EPYC without AVX-512 (seeds 1 and 2 there: +0.095 / +0.205 /
    # +0.145 and +0.111 / +0.265 / +0.185).
    for name, margin in localization_floor.MARGINS.items():
        assert report[name]["hit_rate"] >= report[name]["chance"] + margin, (name, report)
