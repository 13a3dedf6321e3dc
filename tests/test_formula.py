"""The lme4 formula parser: whole parse results compared with one ==, and error positions."""

import pytest

from bayeslmm import FormulaError, ParsedFormula, RandomTerm, parse_formula


def rt(expr, group, correlated=True, text=None, offset=0):
    return RandomTerm(expr=expr, group=group, correlated=correlated, text=text, offset=offset)


@pytest.mark.parametrize("text, expected", [
    ("Reaction ~ Days + (Days | Subject)",
     ParsedFormula("Reaction ~ Days + (Days | Subject)", "Reaction", "Days",
                   (rt("Days", "Subject", True, "(Days | Subject)", 18),))),
    ("y ~ 1 + (1 | g)", ParsedFormula("y ~ 1 + (1 | g)", "y", "1", (rt("1", "g", True, "(1 | g)", 8),))),
    ("y ~ (1|g)", ParsedFormula("y ~ (1|g)", "y", "1", (rt("1", "g", True, "(1|g)", 4),))),
    ("y ~ x + (0 + x | g)",
     ParsedFormula("y ~ x + (0 + x | g)", "y", "x", (rt("0 + x", "g", True, "(0 + x | g)", 8),))),
    ("y ~ x + (1 + x || g)",
     ParsedFormula("y ~ x + (1 + x || g)", "y", "x", (rt("1 + x", "g", False, "(1 + x || g)", 8),))),
    ("y ~ x + (1 | a/b)",
     ParsedFormula("y ~ x + (1 | a/b)", "y", "x",
                   (rt("1", "a", True, "(1 | a/b)", 8), rt("1", "a:b", True, "(1 | a/b)", 8)))),
    ("y ~ x + (1 | a/b/c)",
     ParsedFormula("y ~ x + (1 | a/b/c)", "y", "x",
                   (rt("1", "a", True, "(1 | a/b/c)", 8), rt("1", "a:b", True, "(1 | a/b/c)", 8),
                    rt("1", "a:b:c", True, "(1 | a/b/c)", 8)))),
    ("y ~ x + (1 | a:b)",
     ParsedFormula("y ~ x + (1 | a:b)", "y", "x", (rt("1", "a:b", True, "(1 | a:b)", 8),))),
    ("y ~ x*c + (1 | s) + (1 | i)",
     ParsedFormula("y ~ x*c + (1 | s) + (1 | i)", "y", "x*c",
                   (rt("1", "s", True, "(1 | s)", 10), rt("1", "i", True, "(1 | i)", 20)))),
    ("y ~ (1 | g) + x", ParsedFormula("y ~ (1 | g) + x", "y", "x", (rt("1", "g", True, "(1 | g)", 4),))),
    ("y ~ 0 + x + (1 | g)", ParsedFormula("y ~ 0 + x + (1 | g)", "y", "0 + x", (rt("1", "g", True, "(1 | g)", 12),))),
    ("y ~ np.log(x) + (1 | g)",
     ParsedFormula("y ~ np.log(x) + (1 | g)", "y", "np.log(x)", (rt("1", "g", True, "(1 | g)", 16),))),
    ("y ~ x", ParsedFormula("y ~ x", "y", "x", ())),
])
def test_parse_whole_tree(text, expected):
    assert parse_formula(text) == expected


def test_groups_in_order():
    assert parse_formula("y ~ (1|a) + (0+x|b) + (0+z|a)").groups == ("a", "b")


@pytest.mark.parametrize("text, match", [
    ("y + x", "exactly one '~'"),
    ("y ~ x ~ z", "exactly one '~'"),
    ("y ~ x + (1 | g", r"unbalanced '\('"),
    ("y ~ x + 1 | g)", "unbalanced '\\)'|outside parentheses"),
    ("y ~ x | g", "'\\|' outside parentheses"),
    ("y ~ x + ( | g)", "empty left-hand side"),
    ("y ~ x + (1 | )", "no grouping factor"),
    ("y ~ x + (1 | g + h)", "not a column name"),
    ("log(y) ~ x", "response 'log\\(y\\)' is not a column name"),
    ("y ~ ", "nothing on the right"),
    ("y ~ (1|g) + (1|g)", "appears twice"),
    ("", "non-empty string"),
])
def test_parse_errors_name_the_problem(text, match):
    with pytest.raises(FormulaError, match=match):
        parse_formula(text)


def test_error_shows_position():
    with pytest.raises(FormulaError) as e:
        parse_formula("y ~ x + (1 | g")
    msg = str(e.value)
    assert "character 8" in msg and "        ^" in msg
