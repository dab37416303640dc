"""The expression language: parsed into a small tree, never ``eval``-ed.

Grammar::

    expr    := term (('+' | '-') term)*
    term    := unary (('*' | '/') unary)*
    unary   := '-' unary | primary
    primary := NUMBER | '@' NAME | IDENT '(' [arg (',' arg)*] ')' | IDENT | '(' expr ')'
    arg     := [IDENT '='] expr

``@name`` (or ``@idprefix``) refers to a stored object; a bare identifier is a variable bound
by a recipe sweep (``t``). Errors carry the position they were found at.

A function that works in one role alone (``mix`` in w+) has its other generations lifted into
that role first by a callback the caller gives (``lift``): the model knows how, the algebra not.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from studio import algebra
from studio.checks import check_number, check_text
from studio.errors import ExpressionError, StudioError, printable
from studio.objects import Generation, Lineage

MAX_LENGTH = 10_000  # longer input is refused before tokenizing
MAX_DEPTH = 64  # nesting limit, so a hostile expression cannot exhaust the stack

TOKEN = re.compile(
    r"""(?P<ws>\s+)
      | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<ref>@[A-Za-z0-9_.\-]*)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>[-+*/(),=])""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # number, ref, ident, op, end
    text: str
    pos: int


@dataclass(frozen=True)
class Node:
    pos: int


@dataclass(frozen=True)
class Num(Node):
    value: float


@dataclass(frozen=True)
class Ref(Node):
    name: str  # without the '@'


@dataclass(frozen=True)
class Var(Node):
    name: str


@dataclass(frozen=True)
class Neg(Node):
    operand: Node


@dataclass(frozen=True)
class BinOp(Node):
    op: str  # + - * /
    left: Node
    right: Node


@dataclass(frozen=True)
class Call(Node):
    fn: str
    args: tuple[Node, ...]
    kwargs: tuple[tuple[str, Node], ...] = field(default=())


def tokenize(source: str) -> list[Token]:
    if len(source) > MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_LENGTH} characters")
    tokens, pos = [], 0
    while pos < len(source):
        m = TOKEN.match(source, pos)
        if not m:
            raise ExpressionError(f"unexpected character {source[pos]!r}", source, pos)
        kind = m.lastgroup
        if kind == "ref" and len(m.group()) == 1:
            raise ExpressionError("expected a name after '@'", source, pos + 1)
        if kind != "ws":
            tokens.append(Token(kind, m.group(), pos))
        pos = m.end()
    tokens.append(Token("end", "", len(source)))
    return tokens


class _Parser:
    def __init__(self, source: str):
        self.source = source
        self.tokens = tokenize(source)
        self.i = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, expected: str, tok: Token | None = None) -> ExpressionError:
        tok = tok or self.peek()
        found = "the end of the expression" if tok.kind == "end" else repr(tok.text)
        return ExpressionError(f"expected {expected}, found {found}", self.source, tok.pos)

    def expect(self, text: str) -> Token:
        if self.peek().text != text or self.peek().kind != "op":
            raise self.fail(repr(text))
        return self.take()

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise self.fail("an expression")
        node = self.expr()
        if self.peek().kind != "end":
            raise self.fail("an operator or the end of the expression")
        return node

    def expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(f"expression is nested more than {MAX_DEPTH} deep", self.source, self.peek().pos)
        node = self.term()
        while self.peek().kind == "op" and self.peek().text in "+-":
            tok = self.take()
            node = BinOp(tok.pos, tok.text, node, self.term())
        self.depth -= 1
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek().kind == "op" and self.peek().text in "*/":
            tok = self.take()
            node = BinOp(tok.pos, tok.text, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.peek().kind == "op" and self.peek().text == "-":
            tok = self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExpressionError(f"expression is nested more than {MAX_DEPTH} deep", self.source, tok.pos)
            node = Neg(tok.pos, self.unary())
            self.depth -= 1
            return node
        return self.primary()

    def primary(self) -> Node:
        tok = self.peek()
        if tok.kind == "number":
            self.take()
            return Num(tok.pos, float(tok.text))
        if tok.kind == "ref":
            self.take()
            return Ref(tok.pos, tok.text[1:])
        if tok.kind == "ident":
            self.take()
            if self.peek().text == "(":
                return self.call(tok)
            return Var(tok.pos, tok.text)
        if tok.kind == "op" and tok.text == "(":
            self.take()
            node = self.expr()
            self.expect(")")
            return node
        raise self.fail("a number, an @name, a function call or '('")

    def call(self, name: Token) -> Call:
        if name.text not in algebra.FUNCTIONS:
            known = ", ".join(sorted(algebra.FUNCTIONS))
            raise ExpressionError(f"unknown function {name.text!r} (known: {known})", self.source, name.pos)
        self.expect("(")
        args: list[Node] = []
        kwargs: list[tuple[str, Node]] = []
        if self.peek().text != ")":
            while True:
                tok = self.peek()
                if tok.kind == "ident" and self.tokens[self.i + 1].text == "=":
                    self.take()
                    self.take()
                    kwargs.append((tok.text, self.expr()))
                elif kwargs:
                    raise self.fail("a keyword argument (positional arguments come first)")
                else:
                    args.append(self.expr())
                if self.peek().text == ",":
                    self.take()
                    if self.peek().text == ")":
                        raise self.fail("an argument after ','")
                    continue
                break
        self.expect(")")
        node = Call(name.pos, name.text, tuple(args), tuple(kwargs))
        self.check_arguments(node)
        return node

    def check_arguments(self, node: Call) -> None:
        """Keyword names and the argument count: known from the text, so checked before any lookup."""
        f = algebra.FUNCTIONS[node.fn]
        sig = f.signature(node.fn)
        count = len(node.args)
        for key, value_node in node.kwargs:
            if key not in f.params or f.variadic:
                raise ExpressionError(f"{sig} has no parameter {key!r}", self.source, value_node.pos)
            index = f.params.index(key)
            if index < count:
                raise ExpressionError(f"{sig} got {key!r} twice", self.source, value_node.pos)
            if count < index:
                raise ExpressionError(f"{sig}: give the parameters before {key!r} first", self.source, value_node.pos)
            count += 1
        lo = 1 if f.variadic else len(f.params) - f.optional
        hi = None if f.variadic else len(f.params)
        if count < lo or (hi is not None and count > hi):
            raise ExpressionError(f"{sig} takes {lo if lo == hi else f'{lo} to {hi}' if hi else f'at least {lo}'} "
                                  f"argument(s), got {count}", self.source, node.pos)


def parse(source: str) -> Node:
    """Parse an expression into its tree, or raise ExpressionError pointing at the problem."""
    return _Parser(check_text(source, "the expression")).parse()


def refs(node: Node) -> list[str]:
    """The @names an expression uses, in order of first appearance."""
    return _names(node, Ref)


def variables(node: Node) -> list[str]:
    """The bare variables (sweep parameters) an expression uses."""
    return _names(node, Var)


def _names(node: Node, kind: type) -> list[str]:
    out: list[str] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, kind) and n.name not in out:
            out.append(n.name)
        stack.extend(reversed(_children(n)))
    return out


def _children(n: Node) -> list[Node]:
    if isinstance(n, Neg):
        return [n.operand]
    if isinstance(n, BinOp):
        return [n.left, n.right]
    if isinstance(n, Call):
        return list(n.args) + [v for _, v in n.kwargs]
    return []


_BINOPS = {"+": algebra.add, "-": algebra.sub, "*": algebra.scale, "/": algebra.div}
_OP_NAMES = {"+": "add", "-": "sub", "*": "scale", "/": "div"}


Lift = Callable[[str, algebra.Value], algebra.Value]  # (role, generation) -> the generation in that role


class Evaluator:
    """Evaluates a parsed expression; ``lookup(name)`` returns the stored object an @name means.

    ``lift(role, generation)``, where given, turns a generation argument of a function that works in one
    role (``Function.lift``: w+ for mix) into that role when it lacks it; without it such arguments are
    passed as they are, and the function says what it needs.
    """

    def __init__(self, source: str, lookup: Callable[[str], algebra.Value], bindings: dict[str, float] | None = None,
                 *, lift: Lift | None = None):
        self.source = source
        self.lookup = lookup
        self.bindings = check_bindings(bindings)
        self.lift = lift

    def fail(self, message: str, node: Node) -> ExpressionError:
        return ExpressionError(message, self.source, node.pos)

    def eval(self, node: Node) -> algebra.Value:
        """The value of the tree, computed bottom-up with an explicit stack rather than recursion:
        a long chain such as ``@a + @a + ... + @a`` parses into a tree thousands of levels deep."""
        todo: list[tuple[Node, bool]] = [(node, False)]  # (node, its children are evaluated)
        values: list[algebra.Value] = []  # the children's values, in order, on top
        while todo:
            n, ready = todo.pop()
            children = _children(n)
            if children and not ready:
                todo.append((n, True))
                todo.extend((c, False) for c in reversed(children))
                continue
            args = values[len(values) - len(children):]
            del values[len(values) - len(children):]
            values.append(self._apply(n, args))
        return values[0]

    def _apply(self, node: Node, args: list[algebra.Value]) -> algebra.Value:
        """One node, given its children's values (positional arguments first, then keyword ones)."""
        if isinstance(node, Num):
            return node.value
        if isinstance(node, Ref):
            try:
                return self.lookup(node.name)
            except ExpressionError:
                raise
            except StudioError as exc:
                raise self.fail(str(exc), node) from None
        if isinstance(node, Var):
            if node.name not in self.bindings:
                hint = f" (bound here: {', '.join(self.bindings)})" if self.bindings else ""
                raise self.fail(f"unknown variable {node.name!r}; stored objects are written @{node.name}{hint}", node)
            return float(self.bindings[node.name])
        if isinstance(node, Neg):
            return self._at(node, algebra.neg, *args)
        if isinstance(node, BinOp):
            return self._at(node, _BINOPS[node.op], *args)
        if isinstance(node, Call):  # the parser checked the argument names and count
            f = algebra.FUNCTIONS[node.fn]
            if f.lift is not None and self.lift is not None:
                args = [self._at(arg_node, self.lift, f.lift, arg)
                        if isinstance(arg, Generation) and f.lift not in arg.roles else arg
                        for arg_node, arg in zip(_children(node), args, strict=True)]
            return self._at(node, f.fn, *args)
        raise self.fail("cannot evaluate this", node)

    def _at(self, node: Node, fn: Callable, *args) -> algebra.Value:
        """Apply an op; a space mismatch and the like keeps its words and gains where it happened."""
        try:
            return fn(*args)
        except ExpressionError:
            raise
        except StudioError as exc:
            raise type(exc)(f"{exc} (at position {node.pos + 1} of '{printable(self.source)}')") from None


def check_bindings(bindings: dict[str, float] | None) -> dict[str, float]:
    """Variable values for an expression: a mapping of names to finite real numbers (None: no variables)."""
    if bindings is None:
        return {}
    if not isinstance(bindings, dict):
        raise StudioError(f"bindings must be a mapping of variable names to numbers, got {bindings!r}")
    return {check_text(k, "a binding's name"): check_number(v, f"binding {k!r}") for k, v in bindings.items()}


def lineage_of(node: Node, source: str, parent_ids: list[str], evaluated_params: dict | None = None) -> Lineage:
    """The lineage recorded for an expression's result: its top-level op, the parents, the source, and the
    values of the variables it uses (``evaluated_params``: the bindings)."""
    if isinstance(node, Call):
        op = node.fn
    elif isinstance(node, BinOp):
        op = _OP_NAMES[node.op]
    elif isinstance(node, Neg):
        op = "scale"
    else:
        op = "expr"
    params = {"expr": source}
    if isinstance(node, Call):
        f = algebra.FUNCTIONS[node.fn]
        for name, arg in [*zip(f.params, node.args), *node.kwargs]:
            if isinstance(arg, Num):
                whole = name in f.integers and float(arg.value).is_integer()
                params[name] = int(arg.value) if whole else arg.value
    used = variables(node)
    params.update({k: v for k, v in check_bindings(evaluated_params).items() if k in used and k != "expr"})
    return Lineage(op, params, tuple(parent_ids))


def evaluate(source: str, lookup: Callable[[str], algebra.Value], bindings: dict[str, float] | None = None,
             *, lift: Lift | None = None):
    """Parse and evaluate ``source``; returns (value, tree). ``lift``: see ``Evaluator``."""
    tree = parse(source)
    return Evaluator(source, lookup, bindings, lift=lift).eval(tree), tree
