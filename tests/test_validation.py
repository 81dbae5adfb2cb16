"""The one validation module and the one configuration error type (issue 11 item 1)."""

from __future__ import annotations

import pytest
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_compress import CompressionConfigError, CompressionMonitor, GradualMagnitudePruning, share_weights
from lightning_compress.validation import (
    as_config_error,
    check_choice,
    check_fraction,
    check_int,
    check_milestones,
    check_number,
    check_per_layer,
)


def test_the_error_is_both_a_value_error_and_a_misconfiguration():
    err = CompressionConfigError("x")
    assert isinstance(err, ValueError) and isinstance(err, MisconfigurationException)


@pytest.mark.parametrize("check, value, words", [
    (lambda v: check_number("Owner", "start_epoch", v, low=0), True, "start_epoch must be a finite number >= 0"),
    (lambda v: check_number("Owner", "start_epoch", v, low=0), float("nan"), "got nan"),
    (lambda v: check_int("Owner", "max_iter", v, low=1), 2.0, "max_iter must be an int >= 1"),
    (lambda v: check_fraction("Owner", "final_sparsity", v), 1.5, "final_sparsity must be a finite number >= 0 and <= 1"),
    (lambda v: check_choice("Owner", "scope", v, ["layer", "global"]), True, "scope must be one of"),
    (lambda v: check_per_layer("Owner", "bits", v, lambda o, n, x: check_int(o, n, x, low=1)), {3: 4}, "keys must be"),
    (lambda v: check_per_layer("Owner", "bits", v, lambda o, n, x: check_int(o, n, x, low=1)), {"fc*": 0}, "bits['fc*']"),
    (lambda v: check_milestones("Owner", "schedule", v), {"late": 0.5}, "schedule keys must be numbers"),
])
def test_each_check_names_the_owner_and_the_argument(check, value, words):
    with pytest.raises(CompressionConfigError, match="^Owner: ") as info:
        check(value)
    assert words in str(info.value)


def test_checks_return_what_they_accept():
    assert check_number("O", "x", 3, low=0) == 3
    assert check_milestones("O", "schedule", {"2": 0.5, 4: 0.9}) == {2.0: 0.5, 4.0: 0.9}


def test_a_core_value_error_becomes_the_package_error_once_prefixed():
    with pytest.raises(CompressionConfigError, match=r"^Owner: no layer$"):
        with as_config_error("Owner"):
            raise ValueError("no layer")
    with pytest.raises(CompressionConfigError, match=r"^Owner: already$"):
        with as_config_error("Owner"):
            raise ValueError("Owner: already")


def test_a_selection_typo_is_the_package_error_in_every_entry_point():
    """core.targets raises ValueError; every user-facing layer turns it into CompressionConfigError."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(CompressionConfigError, match="include pattern 'fc9'"):
        share_weights(model, bits=2, include="fc9")
    with pytest.raises(CompressionConfigError, match="include pattern 'fc9'"):
        CompressionMonitor(include="fc9").targets(model)
    with pytest.raises(CompressionConfigError, match="include pattern 'fc9'"):
        GradualMagnitudePruning(0.5, include="fc9")._find_targets(model)
