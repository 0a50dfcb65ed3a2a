"""Bad input → what the user sees: one test per row of nbs/17_bad_input.ipynb (issue 10).

Every user error of `dpo-notes dpo|online-dpo|xpo` ends in ONE line `dpo-notes <cmd>: error: ...` on stderr (the last
line; progress bars and warnings may come before it, a traceback never does) and exit status 2; `--debug` or
DPO_NOTES_DEBUG=1 shows the traceback instead. Each row runs `dpo_notes.cli.main` in-process on the toy model and
tiny files, in about a second."""
import hashlib, json, os, re, shutil
from pathlib import Path

import pytest, torch

from dpo_notes.core import data_dir, set_threads

set_threads()


# ---- tiny inputs
def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows)); return path

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    "Tiny good and bad input files; a copy of toy-s whose tokenizer has no pad token."
    d = tmp_path_factory.mktemp("bad_input")
    pairs = [json.loads(l) for l in open(data_dir() / "toy_prefs_test.jsonl")][:4]
    prompts = [{"prompt": r["prompt"]} for r in pairs]
    f = dict(good=_jsonl(d / "good.jsonl", pairs), prompts=_jsonl(d / "prompts.jsonl", prompts),
             long=_jsonl(d / "long.jsonl", [{**r, "prompt": " ".join([r["prompt"]] * 8)} for r in pairs]),
             no_chosen=_jsonl(d / "no_chosen.jsonl", [{k: v for k, v in r.items() if k != "chosen"} for r in pairs]),
             same=_jsonl(d / "same.jsonl", [{**r, "rejected": r["chosen"]} for r in pairs]),
             no_prompt=_jsonl(d / "no_prompt.jsonl", [{"text": r["prompt"]} for r in pairs]),
             empty_prompt=_jsonl(d / "empty_prompt.jsonl", prompts[:2] + [{"prompt": "  "}]),
             missing=d / "missing.jsonl", out=d / "out")
    (d / "truncated.jsonl").write_text(json.dumps(pairs[0]) + "\n" + json.dumps(pairs[1])[:40] + "\n"); f["truncated"] = d / "truncated.jsonl"
    (d / "empty.jsonl").write_text(""); f["empty"] = d / "empty.jsonl"
    nopad = d / "toy-s-nopad"; shutil.copytree(data_dir() / "toy-s", nopad)
    cfg = json.loads((nopad / "tokenizer_config.json").read_text()); cfg["pad_token"] = None
    (nopad / "tokenizer_config.json").write_text(json.dumps(cfg)); f["nopad"] = nopad
    return f


def run_cli(argv, capsys):
    "`dpo-notes *argv` in this process → (exit status, non-empty stderr lines); an escaping exception is re-raised."
    from dpo_notes.cli import main
    capsys.readouterr()
    try: code = main([str(a) for a in argv])
    except SystemExit as e: code = e.code
    err = capsys.readouterr().err
    return code, [l for l in err.replace("\r", "\n").splitlines() if l.strip()]


def assert_one_line_error(cmd, code, lines, pattern):
    "Exit status 2, no traceback, and exactly one `dpo-notes <cmd>: error: ...` line, the last one, matching `pattern`."
    head = f"dpo-notes {cmd}: error: "
    assert not any("Traceback" in l for l in lines), "\n".join(lines)
    errors = [l for l in lines if l.startswith(head)]
    assert len(errors) == 1 and lines[-1] == errors[0], "\n".join(lines)
    assert re.search(pattern, errors[0][len(head):]), errors[0]
    assert code == 2, (code, errors[0])


def dpo(f, *extra):
    return ["dpo", "--model_name_or_path", "toy:s", "--max_steps", "1", "--per_device_train_batch_size", "2",
            "--output_dir", f["out"], "--disable_tqdm", *extra]

def online(cmd, f, *extra):
    return [cmd, "--model_name_or_path", "toy:s", "--max_steps", "1", "--per_device_train_batch_size", "2",
            "--max_new_tokens", "4", "--disable_tqdm", "--output_dir", "none", *extra]


# ---- rows: (id, command, argv(files), what the one line must say)
ROWS = [
    ("missing data file", "dpo", lambda f: dpo(f, "--dataset_name", f["missing"]), r"no such data file: .*missing\.jsonl"),
    ("prompt longer than max_length", "dpo", lambda f: dpo(f, "--dataset_name", f["long"], "--max_length", "16"),
     r"record 0: field 'prompt' has \d+ tokens, leaving no room for 'chosen' under max_length=16"),
    ("beta <= 0", "dpo", lambda f: dpo(f, "--dataset_name", f["good"], "--beta", "0"), r"beta must be > 0, got 0"),
    ("unknown loss type", "dpo", lambda f: dpo(f, "--dataset_name", f["good"], "--loss_type", "nope"),
     r"loss_type must be a name or a list of names from \('sigmoid', .*\), got 'nope'"),
    ("learning rate NaN", "dpo", lambda f: dpo(f, "--dataset_name", f["good"], "--learning_rate", "nan"), r"learning_rate must be .*got nan"),
    ("batch size 0", "dpo", lambda f: dpo(f, "--dataset_name", f["good"], "--per_device_train_batch_size", "0"),
     r"per_device_train_batch_size must be an int >= 1, got 0"),
    ("every record misses `chosen`", "dpo", lambda f: dpo(f, "--dataset_name", f["no_chosen"]),
     r"no_chosen\.jsonl: .*no usable preference pair among 4 records: records 0, 1, 2, 3: missing field 'chosen'"),
    ("truncated JSON line", "dpo", lambda f: dpo(f, "--dataset_name", f["truncated"]),
     r"truncated\.jsonl: line 2, column \d+: Unterminated string \(expected one complete JSON object per line"),
    ("empty data file", "dpo", lambda f: dpo(f, "--dataset_name", f["empty"]),
     r"empty\.jsonl: the file is empty \(expected one JSON object per line\)"),
    ("chosen == rejected on every record", "dpo", lambda f: dpo(f, "--dataset_name", f["same"]),
     r"same\.jsonl: .*chosen == rejected in records 0, 1, 2, 3, nothing to learn \(expected at least one pair whose completions differ\)"),
    ("prompt file without `prompt`", "online-dpo", lambda f: online("online-dpo", f, "--dataset_name", f["no_prompt"]),
     r"no_prompt\.jsonl: record 0: missing field 'prompt'"),
    ("an empty prompt", "xpo", lambda f: online("xpo", f, "--dataset_name", f["empty_prompt"]),
     r"empty_prompt\.jsonl: record 2: field 'prompt' is empty"),
    ("unknown judge", "online-dpo", lambda f: online("online-dpo", f, "--dataset_name", f["prompts"], "--judge", "oracle"),
     r"--judge.*'oracle'.*(choose from|expected)"),
    ("unknown judge (xpo)", "xpo", lambda f: online("xpo", f, "--dataset_name", f["prompts"], "--judge", "oracle"),
     r"--judge.*'oracle'.*(choose from|expected)"),
    ("reward model that is a causal LM", "online-dpo",
     lambda f: online("online-dpo", f, "--dataset_name", f["prompts"], "--reward_model_name_or_path", data_dir() / "toy-s"),
     r"toy-s'?: expected a sequence-classification checkpoint .*got LlamaForCausalLM"),
]

@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_one_line_error(row, files, capsys):
    name, cmd, argv, pattern = row
    code, lines = run_cli(argv(files), capsys)
    assert_one_line_error(cmd, code, lines, pattern)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how, files, capsys, monkeypatch):
    "--debug (or DPO_NOTES_DEBUG=1): the exception itself, with its traceback, instead of the one line."
    argv = dpo(files, "--dataset_name", files["good"], "--beta", "0")
    if how == "flag": argv = argv + ["--debug"]
    else: monkeypatch.setenv("DPO_NOTES_DEBUG", "1")
    with pytest.raises(ValueError, match="beta must be > 0"): run_cli(argv, capsys)


def test_model_without_pad_token_warns_once_and_runs(files, capsys):
    "A tokenizer without a pad token is given one (the toy vocabulary's '<pad>'), said in a warning; the run goes on."
    with pytest.warns(UserWarning, match="had no pad token: using '<pad>'"):
        code, lines = run_cli(online("online-dpo", files, "--dataset_name", files["prompts"],
                                     "--model_name_or_path", files["nopad"]), capsys)
    assert code == 0 and not any("error" in l for l in lines), lines


# ---- a NaN loss mid-run
def nan_from_step(model, step: int = 2):
    "From the `step`-th training-mode forward on, the final norm outputs NaN (every forward path goes through it)."
    calls = {"n": 0}
    def hook(module, args, out):
        if not module.training: return out
        calls["n"] += 1
        return out * float("nan") if calls["n"] >= step else out
    model.model.norm.register_forward_hook(hook)
    return model

def file_hashes(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}

def all_finite(d: Path) -> bool:
    from safetensors.torch import load_file
    return all(torch.isfinite(t).all().item() for f in d.rglob("*.safetensors") for t in load_file(f).values())


def test_nan_loss_stops_and_keeps_the_good_checkpoint(files, capsys, monkeypatch, tmp_path):
    "NaN at step 2: one line naming the step and the batch, exit 2; the model saved before is byte-identical, nothing NaN saved."
    import dpo_notes.cli as cli
    out = tmp_path / "run"
    good = ["dpo", "--model_name_or_path", "toy:s", "--per_device_train_batch_size", "2", "--disable_tqdm",
            "--dataset_name", files["good"], "--learning_rate", "1e-3", "--output_dir", out]
    code, lines = run_cli(good + ["--max_steps", "1"], capsys)
    assert code == 0 and (out / "model.safetensors").exists(), lines
    before = {k: v for k, v in file_hashes(out).items() if k != "history.jsonl"}   # the live log is the new run's
    real = cli.load_policy                     # the name `dpo-notes dpo` loads the model with
    monkeypatch.setattr(cli, "load_policy", lambda *a, **k: (lambda m, t: (nan_from_step(m, 2), t))(*real(*a, **k)))
    code, lines = run_cli(good + ["--max_steps", "3", "--save_steps", "1"], capsys)
    assert_one_line_error("dpo", code, lines, r"(?i)(nan|inf|non-finite).*step 2.*batch|step 2.*batch.*(nan|inf|non-finite)")
    after = file_hashes(out)
    assert {k: after.get(k) for k in before} == before                     # the good model, untouched
    assert all_finite(out)                                                  # no NaN weights written anywhere
