import pytest

from lmsrr.metrics import average_accuracy, backward_transfer, forgetting, summarize

# After task 1: [90]; after 2: [70, 80]; after 3: [60, 75, 95].
ROWS = [[90.0], [70.0, 80.0], [60.0, 75.0, 95.0]]


def test_hand_computed_matrix():
    assert average_accuracy(ROWS) == pytest.approx((60 + 75 + 95) / 3)
    # task 1: best before the end 90, now 60 -> 30; task 2: best 80, now 75 -> 5
    assert forgetting(ROWS) == pytest.approx((30 + 5) / 2)
    # task 1: 60 - 90 = -30; task 2: 75 - 80 = -5
    assert backward_transfer(ROWS) == pytest.approx((-30 - 5) / 2)


def test_forgetting_uses_the_best_earlier_accuracy_not_the_first():
    rows = [[50.0], [80.0, 90.0], [70.0, 90.0, 99.0]]
    assert forgetting(rows) == pytest.approx(((80 - 70) + (90 - 90)) / 2)
    assert backward_transfer(rows) == pytest.approx(((70 - 50) + (90 - 90)) / 2)


def test_single_task_has_no_forgetting():
    assert summarize([[88.0]]) == {"avg_acc": 88.0, "forgetting": None, "bwt": None}
