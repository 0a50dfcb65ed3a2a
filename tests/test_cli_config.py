"""Issue 18: one config for the three trainers, `--config recipe.yaml`, schedules/optimizers by name, checkpoint
rotation, resuming with `--resume_from_checkpoint true`, and a run killed with SIGKILL that resumes to the same weights."""
import json, math, os, signal, subprocess, sys, textwrap
from dataclasses import fields
from pathlib import Path

import pytest, torch

from dpo_notes.core import data_dir, set_threads

set_threads()
ENV = dict(os.environ, DPO_NOTES_THREADS="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def run_cli(argv, capsys):
    "`dpo-notes *argv` in this process -> (exit status, stdout, non-empty stderr lines)."
    from dpo_notes.cli import main
    capsys.readouterr()
    try: code = main([str(a) for a in argv])
    except SystemExit as e: code = e.code
    cap = capsys.readouterr()
    return code, cap.out, [l for l in cap.err.replace("\r", "\n").splitlines() if l.strip() and not l.startswith("Loading weights")
                               and "examples/s]" not in l]          # datasets' bars building a local folder's splits


def test_three_configs_share_one_base():
    from dpo_notes.runtime import TrainingConfig
    from dpo_notes.train import DPOConfig
    from dpo_notes.online import OnlineDPOConfig
    from dpo_notes.xpo import XPOConfig
    base = {f.name for f in fields(TrainingConfig)}
    for cls in (DPOConfig, OnlineDPOConfig, XPOConfig):
        assert issubclass(cls, TrainingConfig) and base <= {f.name for f in fields(cls)}
        assert all(f.metadata.get("help") for f in fields(cls)), cls
    # field names equal TRL 1.16's wherever TRL has the field (ours-only fields aside)
    import trl
    from trl.experimental.online_dpo import OnlineDPOConfig as TRLOnline
    ours_only = {"max_prompt_length", "shuffle", "ref_cache_dir", "tie_rule", "logps_temperature", "generation_backend"}
    for ours, theirs in ((DPOConfig, trl.DPOConfig), (OnlineDPOConfig, TRLOnline)):
        missing = {f.name for f in fields(ours)} - {f.name for f in fields(theirs)} - ours_only - ({"padding_free"} if ours is OnlineDPOConfig else set())
        assert not missing, missing
    # one message style: "<Config>.<field> must be <what>, got <value>"
    for cls in (DPOConfig, OnlineDPOConfig, XPOConfig):
        with pytest.raises(ValueError, match=rf"^{cls.__name__}\.learning_rate must be a finite number >= 0, got -1"): cls(learning_rate=-1)
        with pytest.raises(ValueError, match=rf"^{cls.__name__}\.lr_scheduler_type must be one of"): cls(lr_scheduler_type="wobbly")


def test_deprecated_name_still_works():
    from dpo_notes.train import DPOConfig
    with pytest.warns(FutureWarning, match="precompute_ref_log_probs"): c = DPOConfig(precompute_ref_logps=True)
    assert c.precompute_ref_log_probs is True and c.precompute_ref_logps is True


@pytest.mark.parametrize("kind", ["cosine", "constant_with_warmup"])
def test_schedules_match_transformers(kind):
    from transformers import get_scheduler
    from dpo_notes.runtime import make_optimizer, make_scheduler, TrainingConfig
    m = torch.nn.Linear(3, 2)
    cfg = TrainingConfig(learning_rate=1e-2, warmup_steps=2, lr_scheduler_type=kind)
    ours = make_scheduler(make_optimizer(m, cfg), cfg, 10)
    ref = get_scheduler(kind, torch.optim.AdamW(m.parameters(), lr=1e-2), num_warmup_steps=2, num_training_steps=10)
    for _ in range(10):
        assert ours.get_last_lr()[0] == pytest.approx(ref.get_last_lr()[0], abs=1e-15)
        ours.optimizer.step(); ours.step(); ref.optimizer.step(); ref.step()


RECIPE = """\
# a TRL-style recipe: TRL's names, our local data
model_name_or_path: toy:s
dataset_name: toy:prefs
dataset_train_split: train
dataset_test_split: test
max_train_samples: 32
beta: 0.1
learning_rate: 5e-3
lr_scheduler_type: cosine
warmup_steps: 1
max_steps: 8
per_device_train_batch_size: 4
per_device_eval_batch_size: 8
logging_steps: 1
eval_steps: 3
save_steps: 2
save_total_limit: 2
disable_tqdm: true
"""


def test_recipe_runs_with_cosine_eval_and_rotation(tmp_path, capsys):
    "`dpo-notes dpo --config recipe.yaml` with a flag overriding the file: the cosine rates, evaluations, 2 checkpoints kept."
    from transformers import get_cosine_schedule_with_warmup
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    out = tmp_path / "run"
    code, stdout, err = run_cli(["dpo", "--config", tmp_path / "recipe.yaml", "--max_steps", "6", "--output_dir", out], capsys)
    assert code == 0, err
    hist = json.loads((out / "history.json").read_text())
    train = [h for h in hist if "loss" in h]
    assert [h["step"] for h in train] == [1, 2, 3, 4, 5, 6]                       # the flag (6) beat the file (8)
    sched = get_cosine_schedule_with_warmup(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=5e-3), 1, 6)
    want = []
    for _ in range(6): want.append(sched.get_last_lr()[0]); sched.optimizer.step(); sched.step()
    assert [h["learning_rate"] for h in train] == pytest.approx(want, abs=1e-15)
    assert [h["step"] for h in hist if "eval_loss" in h] == [3, 6]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]   # save_total_limit: 2


def _pairs_file(tmp_path) -> Path:
    rows = [json.loads(l) for l in open(data_dir() / "toy_prefs_test.jsonl")][:8]
    f = tmp_path / "pairs.jsonl"; f.write_text("".join(json.dumps(r) + "\n" for r in rows)); return f


def _prompt_folder(tmp_path) -> Path:
    "A dataset folder with two splits of toy prompts: train.jsonl (8) and test.jsonl (4)."
    rows = [json.loads(l) for l in open(data_dir() / "toy_prefs_test.jsonl")][:12]
    d = tmp_path / "prompts"; d.mkdir(exist_ok=True)
    for name, part in (("train", rows[:8]), ("test", rows[8:])):
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in part))
    return d


def _chat_file(tmp_path) -> Path:
    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": "alice reviews the blender :"}]}) + "\n" for _ in range(4)))
    return f


BAD = [
    ("missing yaml", "dpo", lambda t: ["--config", t / "nope.yaml"], r"--config: no such file: .*nope\.yaml"),
    ("broken yaml", "dpo", lambda t: ["--config", t / "broken.yaml"], r"--config .*broken\.yaml: not valid YAML"),
    ("unknown key", "online-dpo", lambda t: ["--config", t / "unknown.yaml"], r"unknown key 'learning_rat'"),
    ("missing split", "dpo", lambda t: ["--dataset_name", _pairs_file(t), "--dataset_test_split", "test"], r"only split is 'train'; got 'test'"),
    ("missing split (online)", "xpo", lambda t: ["--dataset_name", _pairs_file(t), "--dataset_train_split", "validation"], r"only split is 'train'"),
    ("unknown scheduler", "xpo", lambda t: ["--lr_scheduler_type", "wobbly"], r"XPOConfig\.lr_scheduler_type must be one of"),
    ("unknown optimizer", "dpo", lambda t: ["--optim", "lion"], r"DPOConfig\.optim must be one of"),
    ("unknown dtype", "online-dpo", lambda t: ["--dtype", "float8"], r"ModelArguments\.dtype must be one of"),
    ("not a checkpoint", "dpo", lambda t: ["--resume_from_checkpoint", t], r"is not a checkpoint"),
    ("no checkpoint to resume", "online-dpo", lambda t: ["--resume_from_checkpoint", "true"], r"has no checkpoint-<step> folder"),
    ("unknown flag", "dpo", lambda t: ["--learning_rat", "1"], r"--learning_rat"),
    ("online eval without prompts to evaluate", "online-dpo", lambda t: ["--dataset_name", _pairs_file(t), "--eval_steps", "1"], r"needs --dataset_test_split"),
    ("online eval split missing", "xpo", lambda t: ["--dataset_name", _prompt_folder(t), "--dataset_test_split", "validation"], r"Unknown split \"validation\".*'train', 'test'"),
    ("chat prompts, no chat template", "online-dpo", lambda t: ["--dataset_name", _chat_file(t)], r"chat prompts .* has no chat template"),
    ("push without output_dir", "dpo", lambda t: ["--push_to_hub", "--output_dir", "none"], r"push_to_hub: needs an output_dir"),
    ("unknown eval strategy", "dpo", lambda t: ["--eval_strategy", "hourly"], r"eval_strategy must be one of no, steps, epoch"),
    ("save limit without saving", "dpo", lambda t: ["--save_total_limit", "2"], r"save_total_limit must be None without save_steps"),
]

@pytest.mark.parametrize("row", BAD, ids=[r[0] for r in BAD])
def test_bad_configuration_is_one_line_and_writes_nothing(row, tmp_path, capsys):
    name, cmd, extra, pattern = row
    (tmp_path / "broken.yaml").write_text("beta: [0.1\n")
    (tmp_path / "unknown.yaml").write_text("beta: 0.1\nlearning_rat: 1e-3\n")
    out = tmp_path / "out"
    code, stdout, lines = run_cli([cmd, "--output_dir", out, "--max_steps", "1", *extra(tmp_path)], capsys)
    head = f"dpo-notes {cmd}: error: "
    assert code == 2 and len(lines) == 1 and lines[0].startswith(head), lines
    import re; assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()


KILLED = r'''
import os, signal, sys
import dpo_notes.{module} as m
real = m.{hook}
def hook(*a, **k):
    r = real(*a, **k)
    if {step_expr} == int(os.environ["KILL_AT"]): os.kill(os.getpid(), signal.SIGKILL)   # no clean-up, no flush
    return r
m.{hook} = hook
from dpo_notes.cli import main
sys.exit(main(sys.argv[1:]))
'''

@pytest.mark.parametrize("cmd", ["dpo", "online-dpo"])
def test_sigkill_then_resume_ends_like_an_uninterrupted_run(cmd, tmp_path):
    "Killed (SIGKILL) after step 5 with checkpoints every 2 steps; resumed with `true`: the weights of a straight run, each step logged once."
    from safetensors.torch import load_file
    common = ["--model_name_or_path", "toy:s", "--max_steps", "6", "--per_device_train_batch_size", "4", "--learning_rate", "5e-3",
              "--logging_steps", "1", "--save_steps", "2", "--disable_tqdm", "--seed", "3"]
    common += ["--max_train_samples", "24"] if cmd == "dpo" else ["--max_new_tokens", "8", "--max_prompts", "32"]
    hook = dict(module="train", hook="step_record", step_expr="a[4]") if cmd == "dpo" else \
        dict(module="online", hook="step_record", step_expr="a[4]")
    script = tmp_path / "killed.py"; script.write_text(KILLED.format(**hook))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    r = subprocess.run([sys.executable, "-m", "dpo_notes.cli", cmd, *common, "--output_dir", str(straight)], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, str(script), cmd, *common, "--output_dir", str(killed)], env=dict(ENV, KILL_AT="5"), capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"] and not (killed / "model.safetensors").exists()
    r = subprocess.run([sys.executable, "-m", "dpo_notes.cli", cmd, *common, "--output_dir", str(killed), "--resume_from_checkpoint", "true"],
                       env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [h["step"] for h in json.loads((killed / "history.json").read_text()) if "loss" in h]
    assert steps == [1, 2, 3, 4, 5, 6]
    live = [json.loads(l) for l in (killed / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in live if "loss" in h] == [1, 2, 3, 4, 5, 6]          # each logged step once, the kill's too
    ck = killed / "checkpoint-4"                                                    # JSON, safetensors, a weights_only optimizer
    assert json.loads((ck / "trainer_state.json").read_text())["step"] == 4 and (ck / "model.safetensors").exists()
    torch.load(ck / "optimizer.pt", weights_only=True); json.loads((ck / "rng_state_0.json").read_text())


def test_tensorboard_events_equal_the_history(tmp_path, capsys):
    "`--report_to tensorboard`: the event files, read back with TensorBoard's EventAccumulator, hold the history's values."
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    code, stdout, err = run_cli(["online-dpo", "--max_steps", "3", "--per_device_train_batch_size", "4", "--max_new_tokens", "8",
                                 "--learning_rate", "1e-3", "--disable_tqdm", "--report_to", "tensorboard", "--output_dir", out], capsys)
    assert code == 0, err
    hist = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines()]
    assert hist == json.loads((out / "history.json").read_text())                      # the live log is the final one
    assert len([l for l in stdout.splitlines() if l.startswith("{")]) == 3               # a printed line per logged step
    import yaml
    card = (out / "README.md").read_text(); meta = yaml.safe_load(card.split("---")[1])   # the model card
    assert meta["tags"][-1] == "online-dpo" and meta["base_model"] == "toy:s" and "--report_to tensorboard" in card
    ev = EventAccumulator(str(next(out.glob("*/events.out.tfevents.*")).parent)); ev.Reload()
    for key in ("loss", "objective/kl", "learning_rate", "rewards/accuracies"):
        got = [(e.step, e.value) for e in ev.Scalars(key)]
        assert got == [(h["step"], pytest.approx(h[key], rel=1e-6, abs=1e-12)) for h in hist if key in h], key


def test_reward_funcs_from_the_working_folder(tmp_path, monkeypatch, capsys):
    "`--reward_funcs mymod:fn` finds `mymod.py` in the working folder, without PYTHONPATH=."
    (tmp_path / "myrewards_i18.py").write_text("def length(prompts, completions, **kw): return [float(len(c)) for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(["online-dpo", "--reward_funcs", "myrewards_i18:length", "--max_steps", "1", "--per_device_train_batch_size", "2",
                                 "--max_new_tokens", "4", "--disable_tqdm", "--output_dir", "none"], capsys)
    assert code == 0, err


def test_online_eval_on_a_prompt_folder_each_epoch(tmp_path, capsys):
    "Online DPO on a folder dataset with its own 'test' split: the win rate by the run's judge before, at each epoch's end."
    out = tmp_path / "run"
    # 8 train prompts, 4 per step: an epoch is 2 steps; 5 steps -> evaluations after steps 0, 2, 4 and 5 (the end)
    code, stdout, err = run_cli(["online-dpo", "--dataset_name", _prompt_folder(tmp_path), "--dataset_test_split", "test",
                                 "--eval_strategy", "epoch", "--judge", "rule", "--max_steps", "5", "--per_device_train_batch_size", "4",
                                 "--max_new_tokens", "8", "--learning_rate", "1e-3", "--disable_tqdm", "--output_dir", out], capsys)
    assert code == 0, err
    hist = json.loads((out / "history.json").read_text())
    ev = [h for h in hist if "eval_win_rate" in h]
    assert [h["step"] for h in ev] == [0, 2, 4, 5]
    assert ev[0]["eval_win_rate"] == 0.5 and ev[0]["eval_failed"] == 0.0     # the starting model against its own samples
    assert all(0 <= h["eval_win_rate"] <= 1 for h in ev) and "eval win rate" in stdout


def test_offline_eval_each_epoch(tmp_path, capsys):
    "`dpo --eval_strategy epoch`: 16 pairs in batches of 4 = 4 steps a pass; 10 steps -> evaluations after 4, 8 and 10."
    code, stdout, err = run_cli(["dpo", "--max_train_samples", "16", "--dataset_test_split", "test", "--eval_strategy", "epoch",
                                 "--max_steps", "10", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "16",
                                 "--disable_tqdm", "--output_dir", tmp_path / "run"], capsys)
    assert code == 0, err
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["step"] for h in hist if "eval_loss" in h] == [4, 8, 10]


def _wandb_history(run_file: Path) -> list[dict]:
    """The history records of an offline W&B run, read from its `.wandb` file: LevelDB-log framing (32 KiB blocks,
    7-byte record headers: crc32, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4) around `wandb_internal_pb2.Record`s."""
    import struct
    from wandb.proto import wandb_internal_pb2 as pb
    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, chunks, buf = 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7: pos += left; continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7]); pos += 7
        if n == 0 and kind == 0: pos += left - 7; continue      # the zero padding at a block's end
        buf += data[pos:pos + n]; pos += n
        if kind in (1, 4): chunks.append(buf); buf = b""
    out = []
    for c in chunks:
        r = pb.Record(); r.ParseFromString(c)
        if r.WhichOneof("record_type") == "history":
            out.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return out


def test_trackio_and_wandb_runs_equal_the_history(tmp_path, monkeypatch, capsys):
    "`--report_to trackio wandb`: Trackio's local store and W&B's offline run file, read back, hold the history's values."
    pytest.importorskip("trackio"); pytest.importorskip("wandb")
    import uuid
    project = f"dpo-notes-test-{uuid.uuid4().hex[:8]}"    # trackio keeps its store where it was imported (TRACKIO_DIR)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path)); monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    code, stdout, err = run_cli(["online-dpo", "--max_steps", "3", "--per_device_train_batch_size", "4", "--max_new_tokens", "8",
                                 "--learning_rate", "1e-3", "--disable_tqdm", "--report_to", "trackio", "wandb",
                                 "--run_name", project, "--output_dir", out], capsys)
    assert code == 0, err
    hist = [h for h in json.loads((out / "history.json").read_text()) if "loss" in h]
    from trackio.sqlite_storage import SQLiteStorage
    (run,) = SQLiteStorage.get_runs(project)                            # the project is the run name
    tk = SQLiteStorage.get_logs(project, run)
    for f in Path(SQLiteStorage.get_project_db_path(project)).parent.glob(f"{project}.*"): f.unlink()   # trackio's store
    wb = _wandb_history(next(tmp_path.glob("wandb/offline-run-*/run-*.wandb")))
    for key in ("loss", "objective/kl", "learning_rate", "rewards/accuracies"):
        want = [(h["step"], pytest.approx(h[key], rel=1e-6, abs=1e-12)) for h in hist]
        assert [(r["step"], r[key]) for r in tk] == want, key
        assert [(r["_step"], r[key]) for r in wb] == want, key


def test_push_to_hub_uploads_the_saved_run(tmp_path, monkeypatch, capsys):
    "`--push_to_hub`: after training, the repository is created and the run folder uploaded, checkpoints left out."
    import fnmatch
    from dpo_notes import runtime
    from types import SimpleNamespace
    calls = []
    class Api:                                                         # a stand-in: there is no hub to reach here
        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok)); return SimpleNamespace(repo_id=repo_id, url=f"https://hf.co/{repo_id}")
        def upload_folder(self, repo_id, folder_path, commit_message, ignore_patterns):
            files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
            calls.append(("upload", repo_id, [f for f in files if not any(fnmatch.fnmatch(f, g) for g in ignore_patterns)]))
    monkeypatch.setattr(runtime, "HfApi", Api)                          # the name push_to_hub calls
    out = tmp_path / "run"
    code, stdout, err = run_cli(["dpo", "--max_train_samples", "8", "--max_steps", "2", "--per_device_train_batch_size", "4",
                                 "--save_steps", "1", "--use_peft", "--lora_r", "2", "--disable_tqdm", "--output_dir", out,
                                 "--push_to_hub", "--hub_model_id", "me/toy-dpo", "--hub_private_repo", "true"], capsys)
    assert code == 0, err
    assert calls[0] == ("create", "me/toy-dpo", True, True)
    sent = calls[1][2]
    assert calls[1][:2] == ("upload", "me/toy-dpo") and {"README.md", "adapter_model.safetensors", "history.jsonl"} <= set(sent)
    assert not any(f.startswith("checkpoint-") for f in sent) and (out / "checkpoint-2").is_dir()
    assert "pushed to https://hf.co/me/toy-dpo" in stdout
