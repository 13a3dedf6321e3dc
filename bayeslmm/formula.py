"""Parse lme4-style mixed-model formulas.

Stage 1 of the pipeline: text in, a frozen :class:`ParsedFormula` out. Only the random-effect bar
terms are parsed here; the fixed part and each bar term's left-hand side stay formula text and are
turned into model matrices by formulaic in :mod:`bayeslmm.design` (treatment contrasts,
interactions, ``0 +`` / ``- 1``, transformations such as ``np.log(x)``).

Supported random terms (lme4 semantics):

=====================  ===================================================================
``(1 | g)``            random intercept per level of ``g``
``(1 + x | g)``        correlated random intercept and slope (LKJ prior on the correlation)
``(x | g)``            same as ``(1 + x | g)``: the intercept is implicit
``(0 + x | g)``        random slope only
``(1 + x || g)``       uncorrelated intercept and slope (diagonal covariance)
``(1 | a/b)``          nested: ``(1 | a) + (1 | a:b)``
``(1 | a:b)``          one effect per observed combination of ``a`` and ``b``
``(1 | a) + (1 | b)``  crossed factors
=====================  ===================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FormulaError

__all__ = ["RandomTerm", "ParsedFormula", "parse_formula"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


@dataclass(frozen=True, slots=True)
class RandomTerm:
    """One bar term after expanding nesting: ``(expr | group)``.

    Attributes
    ----------
    expr : str
        Left of the bar, as formula text (``"1 + Days"``).
    group : str
        Grouping factor label: a column name, or columns joined by ``:``.
    correlated : bool
        False for ``||`` (independent effects).
    text : str
        The term as the user wrote it, for messages.
    offset : int
        Character offset of the term in the formula.
    """

    expr: str
    group: str
    correlated: bool
    text: str
    offset: int

    @property
    def group_columns(self) -> tuple[str, ...]:
        return tuple(self.group.split(":"))


@dataclass(frozen=True, slots=True)
class ParsedFormula:
    """A mixed-model formula split into response, fixed part and random terms.

    Examples
    --------
    >>> f = parse_formula("Reaction ~ Days + (Days | Subject)")
    >>> f.response, f.fixed
    ('Reaction', 'Days')
    >>> f.random[0].expr, f.random[0].group, f.random[0].correlated
    ('Days', 'Subject', True)
    >>> [t.group for t in parse_formula("y ~ 1 + (1 | school/class)").random]
    ['school', 'school:class']
    """

    text: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...]

    @property
    def groups(self) -> tuple[str, ...]:
        """Grouping factor labels in order of first appearance."""
        return tuple(dict.fromkeys(t.group for t in self.random))


def _error(text: str, offset: int, what: str, hint: str) -> FormulaError:
    caret = " " * offset + "^"
    return FormulaError(f"{what} at character {offset} of the formula:\n  {text}\n  {caret}\n{hint}")


def _matching_paren(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise _error(text, start, "unbalanced '('", "Close every '(' with a matching ')'.")


def _split_bar(content: str) -> tuple[str, str, bool] | None:
    """Split ``expr | group`` at the top-level bar; None if there is none."""
    depth = 0
    for i, ch in enumerate(content):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            if content[i + 1 : i + 2] == "|":
                return content[:i], content[i + 2 :], False
            return content[:i], content[i + 1 :], True
    return None


def _expand_group(group: str) -> list[str]:
    """``a/b/c`` -> ``a``, ``a:b``, ``a:b:c``; ``a:b`` stays one factor."""
    parts = [p.strip() for p in group.split("/")]
    out = []
    for k in range(1, len(parts) + 1):
        out.append(":".join(parts[:k]))
    return out


def parse_formula(text: str) -> ParsedFormula:
    """Parse an lme4-style formula.

    Parameters
    ----------
    text : str
        ``"response ~ fixed + (expr | group) + ..."``.

    Returns
    -------
    ParsedFormula

    Raises
    ------
    FormulaError
        If the formula has no single ``~``, unbalanced parentheses, an empty term or group, a bar
        outside parentheses, or a malformed grouping factor. The message shows where.

    Examples
    --------
    >>> parse_formula("y ~ x + (x || g)").random[0].correlated
    False
    """
    if not isinstance(text, str) or not text.strip():
        raise FormulaError("formula must be a non-empty string like 'y ~ x + (1 | g)'")
    if text.count("~") != 1:
        pos = text.find("~", text.find("~") + 1) if text.count("~") > 1 else len(text)
        raise _error(text, max(pos, 0), "expected exactly one '~'",
                     "Write the formula as 'response ~ predictors', e.g. 'y ~ x + (1 | g)'.")
    tilde = text.index("~")
    response = text[:tilde].strip()
    if not _IDENT.match(response):
        raise _error(text, 0, f"response {response!r} is not a column name",
                     "Use a single column name on the left of '~' (add a transformed column to the "
                     "DataFrame for log(y) and similar).")
    rhs_start = tilde + 1
    rhs = text[rhs_start:]
    if not rhs.strip():
        raise _error(text, len(text), "nothing on the right of '~'",
                     "Add predictors, or '1' for an intercept-only model.")

    random: list[RandomTerm] = []
    fixed_parts: list[str] = []
    i, last = 0, 0
    while i < len(rhs):
        ch = rhs[i]
        if ch == ")":
            raise _error(text, rhs_start + i, "unbalanced ')'", "Remove it or add the matching '('.")
        if ch == "(":
            try:
                j = _matching_paren(rhs, i)
            except FormulaError:
                raise _error(text, rhs_start + i, "unbalanced '('",
                             "Close every '(' with a matching ')'.") from None
            content = rhs[i + 1 : j]
            bar = _split_bar(content)
            # a bar term only at top level of the sum (not inside a function call like f((a|b)))
            before = rhs[last:i].rstrip()
            if bar is not None and (not before or before.endswith("+")):
                expr, group, correlated = bar
                offset = rhs_start + i
                term_text = rhs[i : j + 1]
                expr, group = expr.strip(), group.strip()
                if not expr:
                    raise _error(text, offset, f"empty left-hand side in {term_text!r}",
                                 "Write '1 | g' for a random intercept or 'x | g' for a random slope.")
                if not group:
                    raise _error(text, offset, f"no grouping factor in {term_text!r}",
                                 "Name a column after the bar, e.g. '(1 | subject)'.")
                for piece in re.split(r"[/:]", group):
                    if not _IDENT.match(piece.strip()):
                        raise _error(text, offset, f"grouping factor {group!r} in {term_text!r} is not "
                                     "a column name, 'a:b' or 'a/b'",
                                     "Group by plain column names; add a column for anything computed.")
                for g in _expand_group(group):
                    g = ":".join(p.strip() for p in g.split(":"))
                    random.append(RandomTerm(expr=" ".join(expr.split()), group=g,
                                             correlated=correlated, text=term_text, offset=offset))
                fixed_parts.append(rhs[last:i])
                last = j + 1
            i = j + 1
            continue
        if ch == "|":
            raise _error(text, rhs_start + i, "'|' outside parentheses",
                         "Put random-effect terms in parentheses: '(1 + x | g)'.")
        i += 1
    fixed_parts.append(rhs[last:])
    fixed = "".join(fixed_parts)
    # tidy the '+' left behind by removed bar terms
    fixed = re.sub(r"\+\s*(?=\+|-|$)", "", fixed.strip())
    fixed = re.sub(r"^\s*\+", "", fixed).strip()
    fixed = " ".join(fixed.split()) or "1"
    if "|" in fixed:
        raise FormulaError(f"a bar term in {text!r} is not a top-level sum term (fixed part left: "
                           f"{fixed!r}); write random terms as '+ (expr | group)'.")
    seen: set[tuple[str, str]] = set()
    for t in random:
        key = (t.expr.replace(" ", ""), t.group)
        if key in seen:
            raise _error(text, t.offset, f"random term {t.text!r} for '{t.group}' appears twice",
                         "Remove the duplicate term.")
        seen.add(key)
    return ParsedFormula(text=text.strip(), response=response, fixed=fixed, random=tuple(random))
