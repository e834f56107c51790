"""Per-database settings are copied as the server stored them: list settings keep their elements."""

from __future__ import annotations

import pytest
from psycopg import sql

from runner.errors import JobFailed
from runner.pg import dbstate


@pytest.mark.parametrize(
    ("stored", "elements"),
    [
        ('"a,b", public', ["a,b", "public"]),
        ('"$user", public, shop', ["$user", "public", "shop"]),
        ('"we""ird", "Upper Case"', ['we"ird', "Upper Case"]),
        ('""', [""]),
        ("single", ["single"]),
        (' spaced ,\tout ', ["spaced", "out"]),
    ],
)
def test_list_settings_split_like_the_server_joined_them(stored: str, elements: list[str]) -> None:
    assert dbstate.split_guc_list(stored) == elements


@pytest.mark.parametrize("damaged", ['"open', "a,,b", "a b", "a,"])
def test_a_list_the_server_could_not_have_stored_is_refused(damaged: str) -> None:
    with pytest.raises(ValueError, match="in"):
        dbstate.split_guc_list(damaged)


def _render(setting: str) -> str:
    return dbstate._setting_statement(sql.SQL("ALTER DATABASE {}").format(sql.Identifier("d")), setting).as_string()


def test_statements_quote_each_list_element_and_keep_other_values_whole() -> None:
    assert _render('search_path="a,b", public') == """ALTER DATABASE "d" SET "search_path" TO 'a,b', 'public'"""
    assert _render("DateStyle=ISO, DMY") == """ALTER DATABASE "d" SET "DateStyle" TO 'ISO, DMY'"""
    assert _render("myapp.x=it's = fine") == """ALTER DATABASE "d" SET "myapp.x" TO 'it''s = fine'"""


def test_an_unreadable_list_fails_before_anything_is_swapped() -> None:
    with pytest.raises(JobFailed, match=r"cannot read the setting search_path.*the target is unchanged"):
        _render('search_path="unterminated')
