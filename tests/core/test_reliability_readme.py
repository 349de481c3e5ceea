"""README's "Reliability" table is the one the fault tests generate."""

from reliability_table import readme_table, render


def test_the_readme_reliability_table_is_up_to_date():
    assert readme_table() == render(), "README.md is out of date: run `.venv/bin/python tests/reliability_table.py`"
