"""dpo_notes.data against TRL 1.16: tokenisation + collation parity, chat rendering, the real HH sample, bad input.

Run: pytest tests/test_data.py  (about 30 s on a 2-core CPU: the SmolLM2 tokenizer is read from its GGUF once)."""
import json, types, warnings
from pathlib import Path

import pytest, torch, datasets

import dpo_notes
from dpo_notes.core import set_threads
from dpo_notes.data import (PreferenceCollator, PromptCollator, ensure_pad_token, hh_to_chat, load_preferences,
                            load_prompts, load_smollm2_tokenizer, normalize_preference, normalize_preferences,
                            normalize_prompts, render_chat, smollm2_gguf_path, tokenize_preferences, tokenize_prompts,
                            SMOLLM2_CHAT_TEMPLATE)

set_threads()
datasets.disable_progress_bars()
HH_PATH = Path(dpo_notes.__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf-harmless-base-test-500.jsonl"
need_hh = pytest.mark.skipif(not HH_PATH.exists(), reason=f"HH sample not found at {HH_PATH} (it lives in ../shared/data beside the repo, CI only)")

CONV = {"chosen": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}],
        "rejected": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 5."}]}
STD = {"prompt": "What is 2+2?", "chosen": " It is 4.", "rejected": " It is 5."}


@pytest.fixture(scope="module")
def tok(): return load_smollm2_tokenizer()

@pytest.fixture(scope="module")
def hh_raw():
    if not HH_PATH.exists(): pytest.skip(f"HH sample not found at {HH_PATH} (it lives in ../shared/data beside the repo, CI only)")
    return [json.loads(l) for l in HH_PATH.read_text().splitlines()]


def trl_tokenize(records, tokenizer, max_length=None):
    "TRL 1.16's DPO tokenisation (`DPOTrainer._prepare_dataset` on a stand-in trainer carrying the tokenizer)."
    from trl.trainer.dpo_trainer import DPOTrainer
    trainer = types.SimpleNamespace(_tokenizer=tokenizer)
    args = types.SimpleNamespace(dataset_num_proc=None, max_length=max_length, truncation_mode="keep_start")
    ds = DPOTrainer._prepare_dataset(trainer, datasets.Dataset.from_list(list(records)), tokenizer, args, "train")
    return [{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in ds]

def trl_collate(examples, tokenizer, max_length=None):
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    b = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=max_length)(examples)
    b["labels"] = b["input_ids"].masked_fill(b.pop("completion_mask") == 0, -100)
    return b

def assert_parity(ours_records, trl_records, tokenizer, max_length=None, bs=16):
    "Our tokenisation + collator == TRL's (completion_mask mapped to labels), batch by batch."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = tokenize_preferences(ours_records, tokenizer, max_length=max_length, truncation_mode="keep_start").to_list()
    theirs = trl_tokenize(trl_records, tokenizer)
    assert len(ours) == len(theirs)
    coll = PreferenceCollator.from_tokenizer(tokenizer)
    for i in range(0, len(ours), bs):
        a, t = coll(ours[i:i + bs]), trl_collate(theirs[i:i + bs], tokenizer, max_length)
        for k in ("input_ids", "attention_mask", "labels"): assert torch.equal(a[k], t[k]), (i, k)


def test_smollm2_gguf_tokenizer(tok):
    assert smollm2_gguf_path().exists()
    assert tok.chat_template == SMOLLM2_CHAT_TEMPLATE
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|im_end|>")


@pytest.mark.parity
def test_render_chat_matches_trl(tok):
    from trl.data_utils import maybe_apply_chat_template, maybe_extract_prompt
    sys_ = {"role": "system", "content": "Be brief."}
    multi = {f: [CONV["chosen"][0], {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"},
                 {"role": "assistant", "content": a}] for f, a in (("chosen", "6"), ("rejected", "Seven."))}
    for rec in (CONV, {f: [sys_, *m] for f, m in CONV.items()}, multi):
        expected = maybe_apply_chat_template(maybe_extract_prompt(rec), tok)
        assert normalize_preference(rec, tokenizer=tok) == {k: expected[k] for k in ("prompt", "chosen", "rejected")}
    # a prompt that ends with an assistant turn is continued, as TRL does
    nxt = [{"role": "user", "content": "ok"}]
    p, [c] = render_chat(CONV["chosen"], [nxt], tok)
    assert p.endswith("It is 4.") and c == "<|im_end|>\n<|im_start|>user\nok<|im_end|>\n"
    assert maybe_apply_chat_template({"prompt": CONV["chosen"], "completion": nxt}, tok) == {"prompt": p, "completion": c}


def test_parity_inline(tok):
    std = [STD, {"prompt": "Ann reviews the lamp :", "chosen": " great lamp .", "rejected": " bad ."}]
    assert_parity(std, std, tok)
    assert_parity(std, std, tok, max_length=12)           # completions cut, prompt kept: the two rules agree
    conv = [CONV, hh_to_chat({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: Bye!",
                              "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: No."})]
    assert_parity(normalize_preferences(conv, tok), conv, tok)


@need_hh
def test_parity_hh(tok, hh_raw):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = load_preferences(HH_PATH, skip_invalid=True)
    assert len(ds) == 499 and "(86)" in str(w[0].message)
    valid = [r for i, r in enumerate(hh_raw) if i != 86]
    assert_parity(ds, ds, tok)                                     # explicit prompts: identical
    longest = max(len(tok(p).input_ids) for p in ds["prompt"])
    assert_parity(ds, ds, tok, max_length=longest + 16)
    chats = [hh_to_chat(r) for r in valid]
    assert_parity(normalize_preferences(chats, tok), chats, tok)   # as SmolLM2 chats


@need_hh
def test_hh_errors(hh_raw):
    with pytest.raises(ValueError, match="record 86: field 'chosen' is an empty completion"):
        normalize_preferences(hh_raw)


def test_bad_input(tok):
    for rec, msg in [({"prompt": "q", "chosen": "a"}, "record 5: missing field 'rejected'"),
                     ({"prompt": "q", "chosen": 3, "rejected": "b"}, "record 5: field 'chosen' must be a string"),
                     ({"prompt": "q", "chosen": "a", "rejected": "\n"}, "record 5: field 'rejected' is an empty completion"),
                     ({"chosen": "no marker", "rejected": "x"}, "record 5: field 'chosen' has no"),
                     (CONV, "pass a tokenizer")]:
        with pytest.raises(ValueError, match=msg.replace("(", r"\(")): normalize_preference(rec, idx=5)
    with pytest.warns(UserWarning, match="1 of 2 records have chosen == rejected"):
        assert len(normalize_preferences([STD, {**STD, "rejected": STD["chosen"]}])) == 2
    with pytest.warns(UserWarning, match="dropped"):
        assert len(normalize_preferences([STD, {**STD, "rejected": STD["chosen"]}], drop_identical=True)) == 1
    with pytest.raises(ValueError, match="record 1: field 'prompt' has"):
        tokenize_preferences([STD, {**STD, "prompt": "word " * 50}], tok, max_length=20)
    with pytest.warns(UserWarning, match="1 prompts to max_prompt_length=10"):
        tokenize_preferences([STD, {**STD, "prompt": "word " * 50}], tok, max_length=20, max_prompt_length=10)
    with pytest.raises(ValueError, match="record 0: field 'prompt' has"):
        tokenize_prompts([{"prompt": "word " * 50}], tok, max_prompt_length=10, truncation_mode=None)


def test_eos_pad_masks_by_length():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    t = Tokenizer(models.WordLevel({"<eos>": 0, "a": 1, "b": 2, "c": 3}, unk_token="<eos>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    wt = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>")
    with pytest.warns(UserWarning, match="EOS token"): ensure_pad_token(wt)
    assert wt.pad_token_id == wt.eos_token_id == 0
    ds = tokenize_preferences([{"prompt": "a", "chosen": " b c", "rejected": " b"}], wt)
    b = PreferenceCollator.from_tokenizer(wt)(ds.to_list())
    assert b["labels"].tolist() == [[-100, 2, 3, 0], [-100, 2, 0, -100]]   # the real EOS keeps its label
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_prompt_collator_left_pads(tok):
    ds = tokenize_prompts(normalize_prompts([{"prompt": CONV["chosen"][:1]}, {"prompt": "Hi"}], tok), tok)
    b = PromptCollator.from_tokenizer(tok)(ds.to_list())
    n = len(tok("Hi").input_ids)
    assert b["attention_mask"][1].tolist() == [0] * (b["input_ids"].shape[1] - n) + [1] * n
    assert b["input_ids"][1, -n:].tolist() == tok("Hi").input_ids and b["prompt"][1] == "Hi"
    assert b["input_ids"][0].tolist() == ds[0]["prompt_ids"]


def test_local_files(tmp_path, tok):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in [STD, STD]))
    (tmp_path / "c.json").write_text(json.dumps([CONV]))
    datasets.Dataset.from_list([{"prompt": "x"}, {"prompt": "y"}]).to_parquet(tmp_path / "p.parquet")
    assert load_preferences(tmp_path / "a.jsonl").to_list() == [STD, STD]
    assert load_preferences(tmp_path / "c.json", tokenizer=tok)[0]["chosen"] == "It is 4.<|im_end|>\n"
    assert list(load_prompts(tmp_path / "p.parquet")["prompt"]) == ["x", "y"]


def test_toy_prefs_pipeline():
    "The shipped toy set: ids equal the toy text format `prompt + ' ' + completion + eos`; empty answers are reported."
    toy = pytest.importorskip("dpo_notes.toy")
    try: recs, ttok = toy.load_toy_dataset("prefs", "test"), toy.load_toy_tokenizer()
    except (FileNotFoundError, OSError) as e: pytest.skip(f"toy assets not built: {e}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = normalize_preferences(recs, skip_invalid=True)
    t = tokenize_preferences(ds, ttok)
    for r, x in zip(ds.select(range(50)), t.select(range(50))):
        assert x["prompt_ids"] + x["rejected_ids"] == ttok(r["prompt"] + " " + r["rejected"]).input_ids + [ttok.eos_token_id]
    b = PreferenceCollator.from_tokenizer(ttok)(t.select(range(4)).to_list())
    assert b["input_ids"].shape[0] == 8 and (b["labels"] != -100).sum() == sum(len(x["chosen_ids"]) + len(x["rejected_ids"]) for x in t.select(range(4)))
    empty = {"prompt": "alice reviews the phone :", "chosen": "", "rejected": "the phone is bad ."}
    with pytest.raises(ValueError, match="record 0: field 'chosen' is an empty completion"): normalize_preferences([empty])
    assert tokenize_preferences(normalize_preferences([empty], allow_empty=True), ttok)[0]["chosen_ids"] == [ttok.eos_token_id]


# ---- bad input says what and where (issue 10)
def test_no_valid_record_names_the_first_reasons():
    recs = [{"prompt": "q", "rejected": "b"}] * 4
    with pytest.raises(ValueError, match=r"no usable preference pair among 4 records: records 0, 1, 2, 3: missing field 'chosen' \(expected a string"):
        normalize_preferences(recs, skip_invalid=True)


def test_all_identical_is_refused():
    same = [{**STD, "rejected": STD["chosen"]}] * 3
    with pytest.raises(ValueError, match=r"chosen == rejected in records 0, 1, 2, nothing to learn \(expected at least one pair whose completions differ\)"):
        normalize_preferences(same, skip_invalid=True)
    with pytest.raises(ValueError, match="dropped by drop_identical=True"): normalize_preferences(same, drop_identical=True)
    assert len(normalize_preferences(same + [STD], skip_invalid=True)) == 4          # one real pair: kept, with a warning


def test_broken_json_files_name_file_and_line(tmp_path):
    (tmp_path / "cut.jsonl").write_text(json.dumps(STD) + "\n" + json.dumps(STD)[:20] + "\n")
    with pytest.raises(ValueError, match=r"cut.jsonl: line 2, column \d+: .*expected one complete JSON object per line"):
        load_preferences(tmp_path / "cut.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"empty.jsonl: the file is empty \(expected one JSON object per line\)"):
        load_preferences(tmp_path / "empty.jsonl")
    (tmp_path / "cut.json").write_text('[{"prompt": "q",\n')
    with pytest.raises(ValueError, match=r"cut.json: line 2, column 1: Expecting"): load_preferences(tmp_path / "cut.json")
    (tmp_path / "e.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match=r"e.parquet: not a readable parquet file"): load_preferences(tmp_path / "e.parquet")


def test_load_prompts_errors(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "q"}\n')
    with pytest.raises(ValueError, match=r"t.jsonl: record 0: missing field 'prompt'"): load_prompts(tmp_path / "t.jsonl")
    (tmp_path / "e.jsonl").write_text('{"prompt": "q"}\n{"prompt": ""}\n')
    with pytest.raises(ValueError, match=r"e.jsonl: record 1: field 'prompt' is empty"): load_prompts(tmp_path / "e.jsonl")
    with pytest.raises(ValueError, match="no prompts"): load_prompts([])
    (tmp_path / "ok.jsonl").write_text('{"prompt": "q"}\n')
    assert list(load_prompts(tmp_path / "ok.jsonl")["prompt"]) == ["q"]
