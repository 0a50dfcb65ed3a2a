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


def _apply(src: str, edits: list) -> str:
    """`src` with each (start, end, replacement) of `edits` applied, positions as (row, col); `src` itself if the
    result does not parse."""
    if not edits: return src
    offs = [0]
    for l in src.split("\n"): offs.append(offs[-1] + len(l) + 1)
    out = src
    for (r0, c0), (r1, c1), new in sorted(edits, reverse=True):
        a, b = offs[r0 - 1] + c0, offs[r1 - 1] + c1
        out = out[:a] + new + out[b:]
    try: ast.parse(out)
    except SyntaxError: return src
    return out


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
    return _apply(src, edits)


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


MODULE_DOC_WIDTH = 100                                    # tests/test_layers.py holds module docstrings to it
_MARKERS = ("-", "*", "+", "|", ">>>", "...", "#")


def _prose(lines: list[str], base: int) -> bool:
    "Whether a docstring paragraph is running prose (no list, table, code or aligned columns), all at `base`."
    for k, line in enumerate(lines):
        text = line.strip()
        ind = len(line) - len(line.lstrip())
        if (k or ind) and ind != base: return False
        if text.startswith(_MARKERS) or text[:3].rstrip(".)").isdigit() and text[1:3] in (". ", ") "): return False
        if "  " in text: return False
    return True


def _ragged(lines: list[str], room: list[int]) -> bool:
    "Whether a line of the paragraph stops mid-sentence although the next line's first word would fit on it."
    for k in range(len(lines) - 1):
        text, nxt = lines[k].strip(), lines[k + 1].strip()
        if text.endswith((".", ":", ";")): continue
        if len(lines[k].rstrip()) + 1 + len(nxt.split()[0]) <= room[k]: return True
    return False


def _fill(words: list[str], first: int, rest: int, last_extra: int) -> list[str]:
    "Greedy fill: the first line `first` wide, the others `rest`; the last line keeps `last_extra` free."
    out, cur = [], ""
    for w in words:
        limit = first if not out else rest
        if cur and len(cur) + 1 + len(w) > limit: out.append(cur); cur = w
        else: cur = f"{cur} {w}" if cur else w
    out.append(cur)
    if len(out[-1]) + last_extra > (first if len(out) == 1 else rest) and " " in out[-1]:
        head, tail = out[-1].rsplit(" ", 1)
        out[-1:] = [head, tail]
    return out


def _reflow(tok: str, col: int, width: int) -> str:
    "A triple-quoted docstring token whose ragged prose paragraphs are filled again to `width`."
    if not tok.startswith('"""') or not tok.endswith('"""') or len(tok) < 7: return tok
    body = tok[3:-3]
    closing_alone = body.endswith("\n" + " " * col) or body.endswith("\n")
    lines = body.split("\n")
    if closing_alone: lines = lines[:-1]
    paras, cur = [], []                                     # runs of non-blank lines, with their first line index
    for i, line in enumerate(lines):
        if line.strip(): cur.append(i)
        elif cur: paras.append(cur); cur = []
    if cur: paras.append(cur)
    out = list(lines)
    for para in reversed(paras):
        chunk = [lines[i] if i else " " * col + lines[i] for i in para]
        room = [width - (3 if i == 0 else 0) for i in para]
        if not _prose(chunk, col) or not _ragged(chunk, room): continue
        is_last = para[-1] == len(lines) - 1 and not closing_alone
        words = " ".join(l.strip() for l in chunk).split()
        first = width - col - (3 if para[0] == 0 else 0)
        filled = _fill(words, first, width - col, 3 if is_last else 0)
        new = [(" " * col if k or para[0] else "") + t for k, t in enumerate(filled)]
        out[para[0]:para[-1] + 1] = new
    text = "\n".join(out) + ("\n" + " " * col if closing_alone else "")
    return '"""' + text + '"""'


def reflow_docstrings(src: str, width: int = WIDTH) -> str:
    """`src` with each docstring's ragged prose paragraphs filled again (a line cut short mid-sentence by an earlier
    wrap, the next word fitting on it); lists, tables, code and aligned text untouched."""
    try: tree = ast.parse(src)
    except SyntaxError: return src
    docs = _docstring_lines(tree)
    edits, depth = [], 0
    for t in tokenize.generate_tokens(io.StringIO(src).readline):
        if t.type == tokenize.OP and t.string in "([{": depth += 1
        elif t.type == tokenize.OP and t.string in ")]}": depth -= 1
        if t.type == tokenize.STRING and t.start[0] in docs and depth == 0:
            w = min(width, MODULE_DOC_WIDTH) if t.start[1] == 0 else width     # a module docstring: its own limit
            new = _reflow(t.string, t.start[1], w)
            if new != t.string: edits.append((t.start, t.end, new))
    return _apply(src, edits)
