"""Parse lme4-style mixed-model formulas.

Stage 1 of the pipeline: text in, a frozen :class:`ParsedFormula` out. Only the random-effect bar
terms are parsed here; the fixed part and each bar term's left-hand side stay formula text and are
turned into model matrices by formulaic in :mod:`bayeslmm.design` (treatment contrasts,
interactions, ``0 +`` / ``- 1``, transformations such as ``np.log(x)``, and the within-between
split ``within(x, g)`` / ``between(x, g)`` of :mod:`bayeslmm.mundlak`).

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

The response is one column name (for the binomial family also ``cbind(successes, failures)`` or
``cbind(successes, n - successes)``), optionally with known standard errors (brms's addition term):
``y | se(s) ~ ...`` means y_i ~ N(mu_i, s_i^2) with s_i from column ``s`` (meta-analysis; no
residual SD is estimated); ``y | se(s, sigma = TRUE) ~ ...`` adds an estimated residual SD,
y_i ~ N(mu_i, s_i^2 + sigma^2). Nothing else may follow the response's bar.

Formulas are data, never code. formulaic evaluates call terms with Python's ``eval`` (numpy and the
builtins in scope), so before anything is evaluated every term of the fixed part and of each bar
term's left-hand side must be on an allow-list: column names (plain, ```backticked``` or
``Q('name')``), numbers, the operators ``+ - * / : ** ^``, parentheses, and calls of
:data:`ALLOWED_TRANSFORMS` whose arguments are columns, numbers, arithmetic and allowed calls.
Anything else is a :class:`FormulaError` naming the term and its position. The check runs
formulaic's own tokenizer (it evaluates nothing) and walks each call term's Python syntax tree, as
formulaic would parse it; :class:`ParsedFormula` repeats it, so a hand-built or stored formula
cannot bypass it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from formulaic.parser.algos.sanitize_tokens import sanitize_python_code
from formulaic.parser.algos.tokenize import tokenize as _formulaic_tokenize
from formulaic.parser.types import Token
from formulaic.utils.code import sanitize_variable_names

from .errors import FormulaError
from .mundlak import between as _between
from .mundlak import within as _within

__all__ = ["RandomTerm", "ParsedFormula", "parse_formula", "required_columns", "ALLOWED_TRANSFORMS",
           "FORMULA_CONTEXT"]

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
    #: binomial response ``cbind(s, f)``: ``("failures", "f")``; ``cbind(s, n - s)``: ``("trials", "n")``
    trials: tuple[str, str] | None = None
    #: ``offset(expr)`` terms of the fixed part (each an allowed expression, e.g. ``log(exposure)``)
    offsets: tuple[str, ...] = ()
    #: column of known standard errors (``y | se(s) ~ ...``), or None
    se: str | None = None
    #: ``se(s, sigma = TRUE)``: a residual SD is estimated besides the known standard errors
    se_sigma: bool = False

    def __post_init__(self):
        # the same allow-list however the object was made (parse_formula, by hand, from a file)
        _check_name(self.response, "response")
        if self.trials is not None:
            if not (isinstance(self.trials, tuple) and len(self.trials) == 2
                    and self.trials[0] in ("failures", "trials")):
                raise FormulaError(f"trials {self.trials!r} must be ('failures' | 'trials', column)")
            _check_name(self.trials[1], "cbind() column")
        for o in self.offsets:
            _check_or_raise(o, "offset()")
        if self.se is not None:
            _check_name(self.se, "standard-error column se()")
        if not isinstance(self.se_sigma, bool) or (self.se_sigma and self.se is None):
            raise FormulaError("se_sigma=True needs a standard-error column (se=...)")
        if self.se is not None and self.trials is not None:
            raise FormulaError("a cbind() response cannot have known standard errors se(); se() "
                               "belongs to a Gaussian response")
        _check_or_raise(self.fixed, "the fixed part")
        for t in self.random:
            _check_or_raise(t.expr, f"random term {t.text!r}")
            for g in t.group.split(":") if isinstance(t.group, str) else (t.group,):
                _check_name(g, f"grouping factor of {t.text!r}")

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
        outside parentheses, a malformed grouping factor, or a term outside the allow-list
        (:data:`ALLOWED_TRANSFORMS`; nothing is evaluated to find out). The message shows where.

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
    lhs, se, se_sigma = _parse_response(text, text[:tilde])
    trials = None
    m = _CBIND.match(lhs.strip())
    if m:
        if se is not None:
            raise _error(text, 0, "a cbind() response cannot have known standard errors se()",
                         "se() belongs to a Gaussian response ('y | se(s) ~ ...'); cbind() to the "
                         "binomial family.")
        response, trials = _cbind(text, m)
    else:
        response = _column_name(lhs)
    if response is None:
        raise _error(text, 0, f"response {lhs.strip()!r} is not a column name",
                     "Use a single column name on the left of '~' (add a transformed column to the "
                     "DataFrame for log(y) and similar); quote a name with spaces or symbols in "
                     "backticks, like `my y`.")
    rhs_start = tilde + 1
    rhs = text[rhs_start:]
    if not rhs.strip():
        raise _error(text, len(text), "nothing on the right of '~'",
                     "Add predictors, or '1' for an intercept-only model.")

    random: list[RandomTerm] = []
    offsets: list[str] = []
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
            m_off = _OFFSET_CALL.search(before)
            if bar is None and m_off is not None:
                # offset(expr): a known term of the linear predictor, no coefficient, no prior
                inner = " ".join(content.split())
                if not inner:
                    raise _error(text, rhs_start + i, "empty offset()",
                                 "Write offset(log(exposure)) or offset(column).")
                try:
                    _check_part(inner)
                except _Refused as r:
                    raise _error(text, rhs_start + i, f"{r.reason}: term {r.term!r} in offset()",
                                 ALLOWED_HINT) from None
                offsets.append(inner)
                fixed_parts.append(before[:m_off.start()])
                last = j + 1
                i = j + 1
                continue
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
                quoted = re.findall(r"`([^`]*)`", group)
                if any(not q.strip() or ":" in q or "/" in q for q in quoted):
                    raise _error(text, offset, f"grouping factor {group!r} in {term_text!r}: a quoted "
                                 "name is empty or holds ':' or '/' (the nesting operators)",
                                 "Rename the grouping column without ':' and '/'.")
                group = re.sub(r"`([^`]*)`", lambda m: m.group(1), group)
                for piece in re.split(r"[/:]", group):
                    if piece.strip() not in quoted and _column_name(piece) is None:
                        raise _error(text, offset, f"grouping factor {group!r} in {term_text!r} is not "
                                     "a column name, 'a:b' or 'a/b'",
                                     "Group by column names (quote one with spaces or symbols in "
                                     "backticks, like (1 | `my group`)); add a column for anything computed.")
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
    # formulas are data: refuse anything outside the allow-list before formulaic evaluates a term
    parts = [(fixed, rhs_start, "the fixed part")]
    parts += [(t.expr, t.offset, f"random term {t.text!r}") for t in random]
    for part, start, where in dict.fromkeys(parts):
        try:
            _check_part(part)
        except _Refused as r:
            raise _error(text, _locate(text, start, r.term), f"{r.reason}: term {r.term!r} in {where}",
                         ALLOWED_HINT) from None
    seen: set[tuple[str, str]] = set()
    for t in random:
        key = (t.expr.replace(" ", ""), t.group)
        if key in seen:
            raise _error(text, t.offset, f"random term {t.text!r} for '{t.group}' appears twice",
                         "Remove the duplicate term.")
        seen.add(key)
    return ParsedFormula(text=text.strip(), response=response, fixed=fixed, random=tuple(random),
                         trials=trials, offsets=tuple(offsets), se=se, se_sigma=se_sigma)


_CBIND = re.compile(r"^cbind\s*\((.*)\)$", re.S)
#: ``offset`` right before a '(' at the start of a sum term
_OFFSET_CALL = re.compile(r"(^|\+)\s*offset\s*$")


def _cbind(text: str, m: re.Match) -> tuple[str, tuple[str, str]]:
    """``cbind(s, f)`` -> ``("s", ("failures", "f"))``; ``cbind(s, n - s)`` -> ``("s", ("trials", "n"))``."""
    args = [a.strip() for a in m.group(1).split(",")]
    hint = ("Write the binomial response as cbind(successes, failures) or cbind(successes, n - successes) "
            "with column names, as in lme4's glmer.")
    if len(args) != 2:
        raise _error(text, 0, f"cbind() takes two arguments, got {len(args)}", hint)
    s, second = args
    name = _column_name(s)        # the same rule as a plain response (Unicode, `quoted name`)
    if name is None:
        raise _error(text, 0, f"the successes {s!r} in cbind() are not a column name", hint)
    if _column_name(second) is not None:
        return name, ("failures", _column_name(second))
    mm = re.fullmatch(r"(`[^`]+`|[^\s`-]+)\s*-\s*(`[^`]+`|[^\s`-]+)", second)
    if mm and _column_name(mm.group(1)) is not None and _column_name(mm.group(2)) == name:
        return name, ("trials", _column_name(mm.group(1)))
    raise _error(text, 0, f"the second argument {second!r} of cbind() is neither a column of failures "
                 f"nor 'n - {s}'", hint)


_SE_RESPONSE = re.compile(r"^\s*se\s*\(\s*([A-Za-z_][A-Za-z0-9_.]*)\s*"
                          r"(?:,\s*sigma\s*=\s*(TRUE|FALSE|True|False)\s*)?\)\s*$")
SE_HINT = ("After the response's bar only 'se(column)' or 'se(column, sigma = TRUE)' is allowed, "
           "e.g. 'y | se(s) ~ 1 + (1 | study)' (known standard errors, as brms).")


def _parse_response(text: str, lhs: str) -> tuple[str, str | None, bool]:
    """``y`` -> (y, None, False); ``y | se(s)`` -> (y, s, False); ``y | se(s, sigma = TRUE)`` -> (y, s, True)."""
    if "|" not in lhs:
        return lhs.strip(), None, False
    bar = lhs.index("|")
    m = _SE_RESPONSE.match(lhs[bar + 1:])
    if m is None or _is_dunder(m.group(1)):
        raise _error(text, bar + 1, f"{lhs[bar + 1:].strip()!r} after the response is not understood",
                     SE_HINT)
    return lhs[:bar].strip(), m.group(1), (m.group(2) or "FALSE").upper() == "TRUE"


# --------------------------------------------------------------------------------------------
# the allow-list: formulas are data
# --------------------------------------------------------------------------------------------
_ELEMENTWISE = ("log", "log1p", "log2", "log10", "exp", "sqrt", "abs")

#: Transforms a formula may call: name -> (max positional arguments, ((keyword, type), ...)).
#: The first argument is a column expression; ``poly``'s second is its degree (a whole number >= 1);
#: keyword values must be literal ``True``/``False`` (bool) or whole numbers (int). ``C()`` takes no
#: contrast argument: bayeslmm states treatment baselines in ``design.notes``.
ALLOWED_TRANSFORMS: MappingProxyType = MappingProxyType({
    **{f: (1, ()) for f in _ELEMENTWISE},
    **{f"np.{f}": (1, ()) for f in _ELEMENTWISE},
    "scale": (1, (("center", bool), ("scale", bool), ("ddof", int))),
    "center": (1, ()),
    "standardize": (1, (("center", bool), ("rescale", bool), ("ddof", int))),
    "poly": (2, (("degree", int), ("raw", bool))),
    "C": (1, ()),
    "I": (1, ()),
    "Q": (1, ()),
    # within-between (Mundlak) split: (column expression, one grouping column); see bayeslmm.mundlak
    "within": (2, ()),
    "between": (2, ()),
})

#: Names added to formulaic's evaluation namespace, which already has log, log2, log10, exp, scale,
#: center, standardize, poly, C, I, Q and np (and Python's builtins). Pass it as formulaic's
#: ``context=`` so that no caller's variables are in scope (formulaic's default captures the
#: caller's frame) and fitting and prediction see the same names.
FORMULA_CONTEXT: MappingProxyType = MappingProxyType(
    {"log1p": np.log1p, "sqrt": np.sqrt, "abs": np.abs, "within": _within, "between": _between})

_FORMULA_OPERATOR_CHARS = frozenset("+-*/:^")
_ARITHMETIC = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)
_NOT_COLUMNS = frozenset({"np", *ALLOWED_TRANSFORMS})

ALLOWED_HINT = (
    "Formulas may contain only: column names (plain, `backticked` or Q('name')), numbers, the "
    "operators + - * / : ** ^ and parentheses, and the transforms "
    + ", ".join(f"{f}()" for f in _ELEMENTWISE)
    + " (also as np.log() etc.), scale(), center(), standardize(), poly(x, degree), C(x), "
    "within(x, g) and between(x, g) (g a column name), and I(arithmetic with + - * / ** on columns and numbers). For anything else, add a computed "
    "column to the DataFrame.")

_NODE_WORDS = {ast.Attribute: "attribute access", ast.Subscript: "a subscript", ast.Lambda: "a lambda",
               ast.ListComp: "a comprehension", ast.GeneratorExp: "a comprehension",
               ast.Compare: "a comparison", ast.NamedExpr: "an assignment expression"}


class _Refused(Exception):
    """A term outside the allow-list: ``reason`` and the formulaic token text ``term``."""

    def __init__(self, reason: str, term: str):
        super().__init__(reason)
        self.reason, self.term = reason, term


def _is_dunder(name: str) -> bool:
    return any(p.startswith("__") and p.endswith("__") and len(p) > 4 for p in name.split("."))


def _column_name(text: str) -> str | None:
    """A response or grouping column as written: a name (Unicode letters, digits, '_', '.') or any
    text in backticks (returned without them); None otherwise. These names are only ever looked
    up as column labels, never evaluated."""
    name = text.strip()
    if len(name) > 2 and name[0] == name[-1] == "`" and "`" not in name[1:-1] and name[1:-1].strip():
        return name[1:-1]
    if name and all(p.isidentifier() for p in name.split(".")) and not _is_dunder(name):
        return name
    return None


def _check_name(name, what: str) -> None:
    """A response or grouping column (after backticks were removed): a column label, never a
    dunder name or text with backticks or control characters."""
    # never evaluated, but text that reads like a call is refused anyway (defence in depth)
    if (not isinstance(name, str) or not name.strip() or _is_dunder(name) or not name.isprintable()
            or any(ch in name for ch in "`()'\"\\")):
        raise FormulaError(f"{what} {name!r} is not a column name; use a column name without brackets "
                           "or quotes (quote one with spaces or symbols in backticks). " + ALLOWED_HINT)


def _check_or_raise(part, where: str) -> tuple[str, ...]:
    try:
        return _check_part(part)
    except _Refused as r:
        raise FormulaError(f"{r.reason} in the term {r.term!r} of {where} {part!r}. "
                           + ALLOWED_HINT) from None


def required_columns(part: str) -> tuple[str, ...]:
    """Columns used by a fixed part or a bar term's left-hand side, found without evaluating it.

    Parameters
    ----------
    part : str
        Formula text such as ``"1 + np.log(x) + C(g)"``.

    Returns
    -------
    tuple of str
        Column names in order of first use (``Q('a b')`` and ```a b``` give ``'a b'``).

    Raises
    ------
    FormulaError
        If ``part`` uses anything outside the allow-list (see :data:`ALLOWED_TRANSFORMS`).

    Examples
    --------
    >>> required_columns("x + np.log(z) + I(x**2) + C(g) + Q('my col')")
    ('x', 'z', 'g', 'my col')
    """
    return _check_or_raise(part, "the formula part")


def _check_part(part) -> tuple[str, ...]:
    """Check one formula part token by token; return the columns it uses or raise _Refused."""
    if not isinstance(part, str):
        raise _Refused(f"a formula part must be text, not {type(part).__name__}", repr(part))
    try:
        tokens = list(_formulaic_tokenize(part))
    except Exception as exc:  # formulaic's tokenizer is pure Python: a syntax error, nothing ran
        raise _Refused(f"formula text that cannot be read ({exc})".replace("\n", " "), part) from None
    columns: list[str] = []
    for tok in tokens:
        src = tok.source[tok.source_start : tok.source_end + 1] if tok.source_start is not None else tok.token
        kind = tok.kind
        if tok.token == ".":  # formulaic's "all other columns"
            raise _Refused("'.' (all other columns) is not supported; list the predictors", src)
        if kind is Token.Kind.OPERATOR:
            if not tok.token or not set(tok.token) <= _FORMULA_OPERATOR_CHARS:
                raise _Refused(f"the operator {src!r} is not allowed", src)
        elif kind is Token.Kind.CONTEXT:
            if tok.token not in ("(", ")"):
                raise _Refused(f"{tok.token!r} is not allowed (only parentheses group terms)", src)
        elif kind is Token.Kind.VALUE:
            _check_number(tok.token, src)
        elif kind is Token.Kind.NAME:
            columns.append(_check_plain_name(tok, src))
        elif kind is Token.Kind.PYTHON:
            if src.startswith("{"):
                raise _Refused("a {...} Python code block is not allowed", src + "}")
            columns += _check_call_term(tok.token, src)
        else:  # pragma: no cover; formulaic added a token kind
            raise _Refused(f"a {kind} token is not understood", src)
    return tuple(dict.fromkeys(columns))


def _check_number(text: str, src: str) -> None:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if isinstance(value, str):
        raise _Refused("a string is not allowed here (quote column names with backticks or Q())", src)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _Refused(f"{text!r} is not a number or column name", src)


def _check_plain_name(tok, src: str) -> str:
    name = tok.token
    if src.startswith("`"):  # a quoted column label: looked up in the data, never evaluated
        if not name:
            raise _Refused("an empty `` column name", src)
        return name
    if name == "lambda":
        raise _Refused("a lambda is not allowed", src)
    if not all(p.isidentifier() for p in name.split(".")) or _is_dunder(name):
        raise _Refused(f"{name!r} is not a column name (quote unusual names with backticks)", src)
    return name


def _check_call_term(code: str, src: str) -> list[str]:
    """A Python call term such as ``np.log(x)``: parse it as formulaic will and walk its tree."""
    aliases: dict[str, str] = {}
    try:
        # the exact text formulaic evaluates: its own sanitising, then back-tick aliasing
        evaluated = sanitize_variable_names(sanitize_python_code(code), {}, aliases)
        tree = ast.parse(evaluated, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise _Refused("a term that is not a valid transform call", src) from None
    columns: list[str] = []
    try:
        if not isinstance(tree.body, ast.Call):
            raise _Refused("only calls of allowed transforms are allowed here", src)
        _check_call(tree.body, src, aliases, columns)
    except RecursionError:
        raise _Refused("a term nested too deeply", src) from None
    return columns


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "np":
        return f"np.{func.attr}"
    return None


def _check_call(node: ast.Call, src: str, aliases: dict, columns: list) -> None:
    name = _call_name(node.func)
    if name not in ALLOWED_TRANSFORMS:
        shown = ast.unparse(node.func)
        raise _Refused(f"calling {shown!r} is not allowed ({shown} is not an allowed transform)", src)
    max_args, keyword_types = ALLOWED_TRANSFORMS[name]
    keywords = dict(keyword_types)
    if any(isinstance(a, ast.Starred) for a in node.args):
        raise _Refused(f"argument unpacking (*) in {name}() is not allowed", src)
    if name == "C" and (len(node.args) > 1 or node.keywords):
        raise _Refused("C() takes one column and no contrast arguments (bayeslmm uses treatment "
                       "contrasts; choose the baseline with an ordered pandas Categorical)", src)
    if not 1 <= len(node.args) <= max_args:
        raise _Refused(f"{name}() takes {'1 argument' if max_args == 1 else f'1 to {max_args} arguments'}"
                       f", got {len(node.args)}", src)
    seen = set()
    for kw in node.keywords:
        if kw.arg is None or kw.arg not in keywords or kw.arg in seen:
            shown = "**" if kw.arg is None else f"{kw.arg}="
            ok = ", ".join(f"{k}=" for k in keywords) or "none"
            raise _Refused(f"the keyword argument {shown} of {name}() is not allowed (allowed: {ok})", src)
        seen.add(kw.arg)
        _check_constant(kw.value, keywords[kw.arg], f"{name}({kw.arg}=...)", src,
                        minimum=1 if kw.arg == "degree" else 0)
    first = node.args[0]
    if name == "Q":
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)) or node.keywords:
            raise _Refused("Q() takes one quoted column name, like Q('my col')", src)
        columns.append(first.value)
        return
    if name in ("within", "between"):
        if len(node.args) != 2:
            raise _Refused(f"{name}() takes 2 arguments (x, group column), like {name}(x, g)", src)
        group = node.args[1]
        gname = aliases.get(group.id, group.id) if isinstance(group, ast.Name) else None
        if gname is None or group.id in _NOT_COLUMNS or _is_dunder(group.id):
            raise _Refused(f"the group of {name}() must be one column name, like {name}(x, g); got "
                           f"{ast.unparse(group)!r}", src)
        _check_value(first, src, aliases, columns)
        columns.append(gname)
        return
    if name == "poly" and len(node.args) == 2:
        _check_constant(node.args[1], int, "the degree of poly()", src, minimum=1)
    _check_value(first, src, aliases, columns)


def _check_constant(node: ast.expr, kind: type, what: str, src: str, minimum: int = 0) -> None:
    """A keyword value or poly's degree: a literal bool, or a literal whole number >= minimum."""
    v = node.value if isinstance(node, ast.Constant) else None
    ok = isinstance(v, bool) if kind is bool else (isinstance(v, int) and not isinstance(v, bool)
                                                   and v >= minimum)
    if not ok:
        raise _Refused(f"{what} must be {'True or False' if kind is bool else f'a whole number >= {minimum}'}"
                       f", got {ast.unparse(node)!r}", src)


def _check_value(node: ast.expr, src: str, aliases: dict, columns: list) -> bool:
    """An argument: columns, numbers, arithmetic and allowed calls. True if it uses a column."""
    if isinstance(node, ast.Name):
        name = aliases.get(node.id, node.id)
        if node.id in _NOT_COLUMNS or _is_dunder(node.id):
            raise _Refused(f"{name!r} is not a column name", src)
        columns.append(name)
        return True
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return False
        raise _Refused(f"the constant {ast.unparse(node)} is not allowed (only numbers; "
                       "quote column names with Q('name') or backticks)", src)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _check_value(node.operand, src, aliases, columns)
    if isinstance(node, ast.BinOp) and isinstance(node.op, _ARITHMETIC):
        left = _check_value(node.left, src, aliases, columns)
        right = _check_value(node.right, src, aliases, columns)
        if not (left or right):  # Python would compute it, e.g. 9**9**9: refuse instead
            raise _Refused(f"arithmetic on numbers only ({ast.unparse(node)}) is not allowed; "
                           "write the number", src)
        return True
    if isinstance(node, ast.Call):
        _check_call(node, src, aliases, columns)
        return True
    if isinstance(node, ast.BinOp):
        raise _Refused(f"the operator {ast.unparse(node)!r} is not allowed (only + - * / **)", src)
    what = _NODE_WORDS.get(type(node), f"a {type(node).__name__} expression")
    hint = ""
    if isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id == "np"):
        hint = "; quote a column name that contains '.' with backticks, like `my.col`"
    raise _Refused(f"{what} ({ast.unparse(node)}) is not allowed{hint}", src)


def _locate(text: str, start: int, snippet: str) -> int:
    """Offset of ``snippet`` in ``text`` at or after ``start``, ignoring whitespace; else ``start``."""
    i = text.find(snippet, start)
    if i >= 0:
        return i
    chars = [re.escape(c) for c in snippet if not c.isspace()]
    m = re.compile(r"\s*".join(chars)).search(text, start) if chars else None
    return m.start() if m else start
