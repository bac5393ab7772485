"""Draft recommendation: acceptance estimated by teacher-forced agreement with the target's own
answers, turned into an expected speedup by the cost model."""

from __future__ import annotations

from engine.calibration import Calibration, CostCurve
from engine.compat import analyse
from engine.recommend import SAMPLE_REQUESTS, agreement, score, target_answers
from engine.runtime import Model, RuntimeOptions

OPTIONS = RuntimeOptions(n_ctx=1024, n_batch=128)


def test_agreement_ranks_drafts_and_cost_model_decides(tiny_dir):
    target = Model(tiny_dir / "target.gguf", OPTIONS)
    answers = target_answers(target, SAMPLE_REQUESTS, max_tokens=24)
    assert all(answer.tokens for answer in answers)
    itself = Model(tiny_dir / "target.gguf", OPTIONS)
    noisy = Model(tiny_dir / "draft.gguf", OPTIONS)
    foreign = Model(tiny_dir / "other-vocab.gguf", OPTIONS)
    try:
        assert analyse(target, noisy).kind == "native"
        assert analyse(target, foreign).kind == "universal"
        same = agreement(itself, answers, same_vocabulary=True)
        close = agreement(noisy, answers, same_vocabulary=True)
        other = agreement(foreign, answers, same_vocabulary=False)
        assert same == 1.0  # the target agrees with its own greedy answer everywhere
        assert other < close < same
        flat = Calibration(CostCurve([0.01 * (1 + 0.02 * n) for n in range(16)]), {}, 0.0, 0)
        steep = Calibration(CostCurve([0.01 * (1 + 0.9 * n) for n in range(16)]), {}, 0.0, 0)
        on_gpu = score(flat, "itself", itself, analyse(target, itself), answers)
        on_cpu = score(steep, "foreign", foreign, analyse(target, foreign), answers)
        assert on_gpu.window >= 4 and on_gpu.expected_speedup > 1.5
        assert on_cpu.window == 0 and on_cpu.expected_speedup <= 1.0
    finally:
        for model in (target, itself, noisy, foreign):
            model.close()
