"""catapult.analysis.detect_catapults against the module docstring's definition, on tiny
hand-computed trajectories (each case's expected event worked out in its comment)."""
import math

import pytest

from catapult.analysis import Catapult, detect_catapults


def _rows(losses, sharpness):
    """Metrics rows of steps 0, 1, ...; a sharpness of None is a step without a measurement."""
    return [{"step": t, "train_loss": loss, "sharpness": s} for t, (loss, s) in enumerate(zip(losses, sharpness))]


def test_one_catapult_every_field_by_hand():
    # running min before step 3 is 0.8; 2.0 > 1.5 * 0.8 starts the spike, 1.1 <= 1.2 at step 5 ends
    # it, the peak is step 4 (3.0). Sharpness every 2 steps: spacing 2, lookback 4, so "before" is
    # steps -1..3 -> {14, 12}, max 14; "after" is steps > 4 -> {5, 6}, min 5 < 0.8 * 14
    rows = _rows([1.0, 0.9, 0.8, 2.0, 3.0, 1.1, 0.7, 0.6, 0.5, 0.4],
                 [14.0, None, 12.0, None, 20.0, None, 5.0, None, 6.0, None])
    assert detect_catapults(rows) == [Catapult(start=3, peak=4, end=5, loss_before=0.8, loss_peak=3.0,
                                               sharpness_before=14.0, sharpness_after=5.0)]
    # an explicit lookback of 2 steps sees only step 2 (12) before the spike
    assert detect_catapults(rows, lookback=2)[0].sharpness_before == 12.0
    # the drop must exceed drop * before: 5 < (1 - 0.7) * 14 = 4.2 is false
    assert detect_catapults(rows, drop=0.7) == []
    assert detect_catapults(rows, drop=0.6)[0].start == 3  # 5 < 5.6


def test_the_start_steps_own_sharpness_counts_as_before():
    # lookback 2 (every-step measurements): before = steps 1..3 = {5, 5, 20}, max 20 (step 3's own);
    # after = steps 4, 5 = 4 < 0.8 * 20 (but not < 0.8 * 5)
    rows = _rows([1.0, 1.0, 1.0, 3.0, 1.0, 1.0], [5.0, 5.0, 5.0, 20.0, 4.0, 4.0])
    (event,) = detect_catapults(rows)
    assert (event.start, event.peak, event.end, event.sharpness_before, event.sharpness_after) == (3, 3, 4, 20.0, 4.0)


def test_a_loss_of_exactly_rise_times_the_minimum_is_no_spike():
    # 0.75 == 1.5 * 0.5 exactly in binary: "L_s > rise * m_s" is strict
    rows = _rows([0.5, 0.75, 0.5, 0.5], [10.0, 10.0, 1.0, 1.0])
    assert detect_catapults(rows) == []
    assert len(detect_catapults(rows, rise=1.4)) == 1  # 0.75 > 0.7: now it is one


def test_after_stops_where_the_next_spike_starts():
    # spikes at steps 3 (ends 4) and 7 (ends 8). After the first: steps 4..6 = 9, not < 0.8 * 10;
    # the sharpness 2 of steps 8, 9 comes after the second spike and belongs to it
    rows = _rows([1, 1, 1, 3, 1, 1, 1, 4, 1, 1], [10, 10, 10, 10, 9, 9, 9, 9, 2, 2])
    (event,) = detect_catapults(rows)
    assert (event.start, event.sharpness_before, event.sharpness_after) == (7, 9, 2)


def test_without_a_measurement_in_the_lookback_the_last_earlier_one_is_before():
    # measurements at steps 0 (30) and 1 (20), then none until step 9: lookback 2 finds nothing
    # in 4..6 before the spike at 6, so "before" is the last measurement at or before it: 20
    losses = [1.0] * 6 + [5.0, 5.0, 1.0, 1.0]
    sharp = [30.0, 20.0] + [None] * 7 + [10.0]
    (event,) = detect_catapults(_rows(losses, sharp))
    assert (event.start, event.peak, event.end, event.sharpness_before, event.sharpness_after) == (6, 6, 8, 20.0, 10.0)


def test_the_peak_is_the_largest_loss_inside_the_spike_and_an_open_spike_has_no_end():
    # start 2, never back under 1.5: end None; the losses 3, 7, 4 peak at step 3
    rows = _rows([1.0, 1.0, 3.0, 7.0, 4.0, 4.0], [10.0, 10.0, 10.0, 2.0, 2.0, 2.0])
    assert detect_catapults(rows) == [Catapult(start=2, peak=3, end=None, loss_before=1.0, loss_peak=7.0,
                                               sharpness_before=10.0, sharpness_after=2.0)]


@pytest.mark.parametrize("losses", [
    [1.0, 1.0, 3.0, 5.0, math.nan, 1.0],   # the spike ran into divergence: the loss never came back
    [1.0, math.inf, 3.0, 1.0, 1.0, 1.0],   # diverged before any spike: nothing after it counts
])
def test_spikes_into_or_after_divergence_are_not_catapults(losses):
    assert detect_catapults(_rows(losses, [10.0, 10.0, 10.0, 2.0, 2.0, 2.0])) == []


def test_bool_and_nan_sharpness_are_not_measurements():
    # True/nan in the sharpness column are skipped: only two real measurements remain, 10 then 2
    rows = _rows([1.0, 1.0, 3.0, 1.0, 1.0], [10.0, True, math.nan, 2.0, None])
    (event,) = detect_catapults(rows, lookback=5)
    assert (event.sharpness_before, event.sharpness_after) == (10.0, 2.0)
    assert detect_catapults(_rows([1.0, 3.0, 1.0], [True, None, 0.5])) == []  # one measurement: none


def test_a_spike_ends_at_a_loss_of_exactly_rise_times_the_minimum():
    # mutation pass 21 (AN2): "L_e <= rise * m_s" is not strict: 0.75 == 1.5 * 0.5 at step 3 ends the spike
    # started at step 2 (2.0 > 0.75); lookback 2, before = {10}, after = steps 3, 4 = {2}
    (event,) = detect_catapults(_rows([0.5, 0.5, 2.0, 0.75, 0.5], [10.0, 10.0, 10.0, 2.0, 2.0]))
    assert (event.start, event.peak, event.end) == (2, 2, 3)


def test_the_lookback_window_includes_its_first_step():
    # mutation pass 21 (AN5): measurements every 2 steps (lookback 4); the spike starts at step 6, so the window
    # is steps 2..6 inclusive: step 2's 30 is before (max of 30, 10, 10), not 10
    rows = _rows([1.0] * 6 + [3.0, 1.0, 1.0, 1.0], [None, None, 30.0, None, 10.0, None, 10.0, None, 2.0, None])
    (event,) = detect_catapults(rows)
    assert (event.start, event.sharpness_before, event.sharpness_after) == (6, 30.0, 2.0)


def test_a_repeated_step_gives_the_lookback_of_a_spacing_of_one():
    # mutation pass 21 (AN4): step 0 logged twice makes the smallest spacing 0, read as 1 (lookback 2): the spike
    # at step 2 sees steps 0..2 = {30, 30, 20}, before 30 (a lookback of 0 saw none, then the last one, 20)
    rows = [{"step": s, "train_loss": loss, "sharpness": sh} for s, loss, sh in
            zip([0, 0, 1, 2, 3, 4], [1.0, 1.0, 1.0, 3.0, 1.0, 1.0], [30.0, 30.0, 20.0, None, 4.0, 4.0])]
    (event,) = detect_catapults(rows)
    assert (event.start, event.sharpness_before, event.sharpness_after) == (2, 30.0, 4.0)


def test_after_is_the_smallest_measurement_after_the_peak_step_itself():
    # mutation pass 21: the peak step's own measurement (1) is not after it (AN7); after = steps 4, 5 = {6, 3},
    # the smallest 3, not the first (AN9); before (lookback 2) = steps 1..3 = {10, 10, 1}, 10
    (event,) = detect_catapults(_rows([1.0, 1.0, 1.0, 3.0, 1.0, 1.0], [10.0, 10.0, 10.0, 1.0, 6.0, 3.0]))
    assert (event.peak, event.sharpness_before, event.sharpness_after) == (3, 10.0, 3.0)


def test_a_drop_of_exactly_drop_times_before_is_no_catapult():
    # mutation pass 21 (AN8): "after < (1 - drop) * before" is strict: 5 == 0.5 * 10 is none; at drop 0.4 it is one
    rows = _rows([1.0, 1.0, 1.0, 3.0, 1.0, 1.0], [10.0, 10.0, 10.0, 10.0, 5.0, 5.0])
    assert detect_catapults(rows, drop=0.5) == []
    assert [e.sharpness_after for e in detect_catapults(rows, drop=0.4)] == [5.0]
