import numpy as np
import pytest

from timm_trd.plan.schedule import TRDSchedule, compute_share, round_half_up


@pytest.mark.parametrize('prob', [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize('batches', [1, 2, 5, 7, 100, 1251])
def test_each_epoch_holds_exactly_round_p_times_batches(prob, batches):
    schedule = TRDSchedule(prob=prob, total_epochs=5, seed=3)
    expected = int(np.floor(prob * batches + 0.5))
    for epoch in range(5):
        assert schedule.reduced_count(epoch, batches) == expected


def test_halves_round_up_not_to_even():
    assert round_half_up(2.5) == 3 and round_half_up(0.5) == 1 and round_half_up(0.45 * 10) == 5
    assert TRDSchedule(prob=0.5, total_epochs=1).reduced_count(0, 5) == 3


def test_plan_is_a_function_of_seed_and_epoch_only():
    # two ranks, or a run and its resumption, build their schedules independently
    rank0 = TRDSchedule(prob=0.5, total_epochs=10, seed=42)
    rank1 = TRDSchedule(prob=0.5, total_epochs=10, seed=42)
    resumed = TRDSchedule(prob=0.5, total_epochs=10, seed=42)
    first_run = [rank0.plan(e, 50) for e in range(10)]
    assert all(np.array_equal(first_run[e], rank1.plan(e, 50)) for e in range(10))
    # a resumed run asks only for the later epochs, in any order: same answers
    for e in (9, 6, 7):
        assert np.array_equal(resumed.plan(e, 50), first_run[e])


def test_positions_change_with_epoch_and_seed():
    schedule = TRDSchedule(prob=0.5, total_epochs=10, seed=1)
    plans = [schedule.plan(e, 64) for e in range(10)]
    assert len({p.tobytes() for p in plans}) == 10
    other = TRDSchedule(prob=0.5, total_epochs=10, seed=2)
    assert not np.array_equal(other.plan(0, 64), plans[0])


def test_positions_are_spread_over_the_epoch():
    # over many epochs every position is reduced about p of the time (no bias to the start or end)
    schedule = TRDSchedule(prob=0.5, total_epochs=400, seed=0)
    freq = np.mean([schedule.plan(e, 20) for e in range(400)], axis=0)
    assert freq.min() > 0.4 and freq.max() < 0.6


def test_full_resolution_tail():
    schedule = TRDSchedule(prob=0.9, total_epochs=10, full_res_epochs=3, seed=0)
    assert schedule.window_epochs == 7
    counts = [schedule.reduced_count(e, 40) for e in range(10)]
    assert counts == [36] * 7 + [0] * 3


@pytest.mark.parametrize('prob,total,tail,expected', [(0.5, 10, 0, 5), (0.9, 10, 0, 9), (0.5, 9, 2, 4), (0.3, 5, 0, 2)])
def test_epoch_granularity_reduces_whole_epochs(prob, total, tail, expected):
    schedule = TRDSchedule(prob=prob, total_epochs=total, full_res_epochs=tail, granularity='epoch', seed=5)
    reduced = schedule.reduced_epochs()
    assert len(reduced) == expected
    assert all(e < total - tail for e in reduced)
    for e in range(total):
        plan = schedule.plan(e, 13)
        assert plan.all() if e in reduced else not plan.any()
    assert TRDSchedule(prob=prob, total_epochs=total, full_res_epochs=tail, granularity='epoch',
                       seed=5).reduced_epochs() == reduced


@pytest.mark.parametrize('kwargs', [
    dict(prob=1.5, total_epochs=2), dict(prob=-0.1, total_epochs=2), dict(prob=0.5, total_epochs=0),
    dict(prob=0.5, total_epochs=2, full_res_epochs=2), dict(prob=0.5, total_epochs=2, granularity='step'),
    dict(prob=0.5, total_epochs=2, seed=-1),
])
def test_invalid_schedules_are_rejected(kwargs):
    with pytest.raises(ValueError):
        TRDSchedule(**kwargs)


def test_paper_compute_shares():
    assert compute_share(0.9, (112, 112), (224, 224)) == pytest.approx(0.325)
    assert compute_share(0.5, (112, 112), (224, 224)) == pytest.approx(0.625)
    assert compute_share(0.5, (80, 80), (160, 160)) == pytest.approx(0.625)


def test_epoch_granularity_too_few_epochs_to_alternate_is_a_problem_and_the_start_line_tells_the_served_share():
    from timm_trd.plan.schedule import epoch_granularity_problem
    from timm_trd.plugin.config import TRDConfig
    from timm_trd.plugin.report import start_line
    assert 'reduces 1 of the 1 TRD epoch' in epoch_granularity_problem(TRDSchedule(0.5, 1, granularity='epoch'))
    assert 'reduces 0 of the 4 TRD epochs' in epoch_granularity_problem(TRDSchedule(0.1, 4, granularity='epoch'))
    assert '5 or more TRD epochs' in epoch_granularity_problem(TRDSchedule(0.1, 4, granularity='epoch'))
    assert epoch_granularity_problem(TRDSchedule(0.5, 1)) is None  # batch granularity: batches alternate
    schedule = TRDSchedule(0.5, 3, granularity='epoch', seed=42)
    assert epoch_granularity_problem(schedule) is None and len(schedule.reduced_epochs()) == 2
    line = start_line(TRDConfig(prob=0.5, granularity='epoch'), schedule, 'device', 'auto', (64, 64), (32, 32))
    epochs = ', '.join(map(str, schedule.reduced_epochs()))
    assert line.startswith(f'TRD: 2 of 3 epochs (share 0.667; --trd-prob 0.5 in whole epochs: {epochs}) at 32x32 ')
    assert line.endswith('ideal compute 0.500 of full size')  # 1 - 2/3 * 0.75, not 1 - 0.5 * 0.75 = 0.625
