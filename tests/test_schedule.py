"""LR schedules and metrics are pure functions of explicit arguments."""
import math

import pytest

from rnn_train.training.schedule import PlateauState, bits_per_char, lr_at, perplexity, plateau_step, ppl_text


def test_warmup_rises_linearly_to_the_peak():
    assert [lr_at(s, 1.0, "constant", warmup_steps=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_goes_from_peak_to_floor_and_stays_there():
    lrs = [lr_at(s, 1.0, "cosine", warmup_steps=0, total_steps=100, min_lr=0.1) for s in range(150)]
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[50] == pytest.approx(0.55)
    assert lrs[100] == pytest.approx(0.1) and lrs[149] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_plateau_cuts_the_scale_after_patience_bad_validations():
    s = PlateauState()
    for loss in (3.0, 2.0, 2.5, 2.4):  # two bad evaluations: patience 2 not yet exceeded
        s = plateau_step(s, loss, factor=0.5, patience=2)
    assert s.scale == 1.0
    s = plateau_step(s, 2.1, factor=0.5, patience=2)
    assert s.scale == 0.5 and s.bad_evals == 0 and s.best == 2.0
    assert lr_at(10, 0.2, "plateau", plateau_scale=s.scale) == pytest.approx(0.1)


def test_perplexity_and_bits_per_char():
    assert perplexity(math.log(28)) == pytest.approx(28)
    assert bits_per_char(math.log(2) * 3) == pytest.approx(3)
    assert perplexity(1e6) == math.inf


def test_a_perplexity_prints_with_three_decimals_until_it_is_huge():
    assert ppl_text(17.6031) == "17.603" and ppl_text(999_999.0) == "999999.000"
    assert ppl_text(math.exp(96)) == "4.923e+41"  # a diverging run's, not a 42-digit number
    assert ppl_text(perplexity(1e9)) == "inf"


def test_a_score_line_survives_a_loss_beyond_exp():
    from rnn_train.prediction.score import Score

    line = Score(chars=3, scored=2, nats=2e9).line("t.txt")  # a finite model with enormous logits
    assert "loss 1000000000.0000 | ppl inf |" in line
