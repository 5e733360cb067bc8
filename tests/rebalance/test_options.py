import click
import pytest

from rebalance.cli.options import set_threads


def test_set_threads_option_names_the_flag_on_a_bad_count():
    with pytest.raises(click.BadParameter, match="threads must be an integer >= 1"):
        set_threads(0)
