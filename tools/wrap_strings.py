"""Break the string literals that make a line longer than the limit, keeping every value the same: a string inside
brackets becomes adjacent literals on aligned lines (implicit concatenation), one at statement level is parenthesised
first; a docstring becomes a wrapped triple-quoted docstring. Used by `format_exported.py` after `ruff format`."""
import ast, io, textwrap, tokenize

WIDTH = 110


def _parts(tok: str):
    "(prefix, quote, body) of a one-line string literal token, or None for a triple-quoted or odd one."
    i = 0
    while tok[i] not in "'\"": i += 1
    prefix, q = tok[:i], tok[i]
    if tok[i:i + 3] in ('"""', "'''") or not tok.endswith(q): return None
    return prefix, q, tok[i + 1:-1]


def _break_points(body: str, fstring: bool) -> list[int]:
    "Indices just after a space where the body can be cut (outside f-string fields and escapes)."
    out, depth, i = [], 0, 0
    while i < len(body):
        ch = body[i]
        if ch == "\\": i += 2; continue
        if fstring and body[i:i + 2] in ("{{", "}}"): i += 2; continue
        if fstring and ch == "{": depth += 1
        elif fstring and ch == "}": depth -= 1
        elif ch == " " and depth == 0: out.append(i + 1)
        i += 1
    return out


def split_literal(tok: str, col: int, width: int = WIDTH, tail: int = 2) -> list[str] | None:
    "Pieces of one-line literal `tok` starting at column `col`, each fitting `width` (`tail`: room for `),` after)."
    p = _parts(tok)
    if p is None: return None
    prefix, q, body = p
    room = width - col - len(prefix) - 2 - tail
    if room < 20: return None
    cuts, pieces, start = _break_points(body, "f" in prefix.lower()), [], 0
    while len(body) - start > room:
        fit = [c for c in cuts if start < c <= start + room]
        if not fit: break
        pieces.append(body[start:fit[-1]]); start = fit[-1]
    pieces.append(body[start:])
    return None if len(pieces) == 1 else [f"{prefix}{q}{s}{q}" for s in pieces]


def _docstring_lines(tree) -> set[int]:
    "Start lines of the docstrings (module, class, function) in `tree`."
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body:
            d = n.body[0]
            if isinstance(d, ast.Expr) and isinstance(d.value, ast.Constant) and isinstance(d.value.value, str):
                out.add(d.lineno)
    return out


def _wrap_docstring(tok: str, col: int, width: int) -> str | None:
    "A docstring token rewritten as a triple-quoted docstring whose lines fit `width`."
    p = _parts(tok)
    if p is not None:
        prefix, q, body = p
        if '"""' in body or body.endswith('"') or "r" in prefix.lower(): return None
        lines = textwrap.wrap(body, width - col, initial_indent="", subsequent_indent="",
                              break_long_words=False, break_on_hyphens=False)
        lines[0] = '"""' + lines[0]
        if len(lines[0]) + col > width:
            lines = ['"""' + l for l in textwrap.wrap(body, width - col - 3, break_long_words=False, break_on_hyphens=False)]
            lines = [lines[0]] + [l[3:] for l in lines[1:]]
        text = ("\n" + " " * col).join(lines)
        return prefix + text + '"""'
    # triple-quoted: re-wrap only its physical lines that are too long, at their own indentation
    out = []
    for k, line in enumerate(tok.split("\n")):
        start = col if k == 0 else 0
        if start + len(line) <= width: out.append(line); continue
        ind = len(line) - len(line.lstrip()) if k else 0
        head = " " * ind
        w = textwrap.wrap(line.strip() if k else line, width - start, initial_indent="" if k == 0 else head,
                          subsequent_indent=" " * (col if k == 0 else ind), break_long_words=False, break_on_hyphens=False)
        out.extend(w or [line])
    return "\n".join(out)


def wrap_strings(src: str, width: int = WIDTH) -> str:
    "`src` with its over-long string literals broken as the module docstring says; other text untouched."
    try: tree = ast.parse(src)
    except SyntaxError: return src
    docs = _docstring_lines(tree)
    lines = src.split("\n")
    long = {i + 1 for i, l in enumerate(lines) if len(l) > width}
    if not long: return src
    edits, depth = [], 0                                      # (start, end, replacement) in (row, col)
    for t in tokenize.generate_tokens(io.StringIO(src).readline):
        if t.type == tokenize.OP and t.string in "([{": depth += 1
        elif t.type == tokenize.OP and t.string in ")]}": depth -= 1
        if t.type != tokenize.STRING or not any(r in long for r in range(t.start[0], t.end[0] + 1)): continue
        row, col = t.start
        if row in docs and depth == 0:
            new = _wrap_docstring(t.string, col, width)
        elif t.start[0] == t.end[0] and t.end[1] > width - 2:          # a `,` or `)` may follow it
            pieces = split_literal(t.string, col + (0 if depth else 1), width)
            if pieces is None: continue
            joint = "\n" + " " * (col + (0 if depth else 1))
            new = joint.join(pieces) if depth else "(" + joint.join(pieces) + ")"
        else: continue
        if new is not None and new != t.string: edits.append((t.start, t.end, new))
    if not edits: return src
    offs = [0]
    for l in lines: offs.append(offs[-1] + len(l) + 1)
    out = src
    for (r0, c0), (r1, c1), new in sorted(edits, reverse=True):
        a, b = offs[r0 - 1] + c0, offs[r1 - 1] + c1
        out = out[:a] + new + out[b:]
    try: ast.parse(out)
    except SyntaxError: return src
    return out


def wrap_comments(src: str, width: int = WIDTH) -> str:
    """Over-long comments wrapped onto comment lines of their own (a trailing one moves above its line); every other
    line as it was."""
    comments = {}
    for t in tokenize.generate_tokens(io.StringIO(src).readline):
        if t.type == tokenize.COMMENT: comments[t.start[0]] = t
    out = []
    for i, line in enumerate(src.split("\n"), 1):
        if len(line) <= width: out.append(line); continue
        t = comments.get(i)
        if t is None or t.string.startswith("#|") or "noqa" in t.string: out.append(line); continue
        code = line[:t.start[1]].rstrip()
        ind = len(line) - len(line.lstrip())
        text = t.string.lstrip("#").strip()
        wrapped = textwrap.wrap(text, width - ind - 2, break_long_words=False, break_on_hyphens=False)
        out += [" " * ind + "# " + w for w in wrapped]
        if code.strip(): out.append(code)
    return "\n".join(out)
