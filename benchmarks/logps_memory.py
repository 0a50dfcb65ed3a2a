"""Peak memory and time of per-sequence log-probs, forward + backward: naive vs lean (vs TRL's fused head).

    python benchmarks/logps_memory.py                       # CPU, vocab 32000 49152 151936
    python benchmarks/logps_memory.py --device cuda --rows 8 --seq 1024 --completion 512
    python benchmarks/logps_memory.py --json out.json       # also write the results

Every method gets the same inputs: final hidden states `h` (rows, seq, hidden) that require grad (standing in for
the decoder's output), an LM head `W` (vocab, hidden), and labels whose last `completion` positions are completion
tokens (-100 elsewhere). Each computes the (rows,) summed completion log-probs and back-propagates
`(logps * c).sum()` with a random weight per row, as a DPO loss would.

- `naive`:      `logits = h @ W.T`, then `log_softmax(logits).gather(...)`: materialises two (rows, seq, vocab) tensors.
- `full_logits`: `logits = h @ W.T`, then `dpo_notes.logps.get_batch_logps` (gather - logsumexp in row chunks): the
                 full logits exist, their log_softmax never does.
- `lean`:       `dpo_notes.logps.linear_logps` on the completion positions only: the (tokens, vocab) logits exist one
                 chunk at a time, in the forward and again in the backward (or not at all with a frozen head).
- `trl_fused`:  TRL's `ChunkedLogProbFunction` called the way `trl.trainer.utils.add_fused_lm_head` calls it on this
                 device, with the per-token outputs `DPOTrainer` requests (log_probs, entropy, mean_logits, is_top1).

What "peak" means here:
- cuda: `torch.cuda.max_memory_allocated()` during the call minus `torch.cuda.memory_allocated()` just before it:
  the extra memory the method needs on top of its inputs.
- cpu: each (method, vocab) runs in a fresh subprocess; after a warm-up call, the peak resident set size is reset
  (`/proc/self/clear_refs`), the call runs, and the reported number is the new peak (`VmHWM`) minus the resident
  size just before the call (`VmRSS`). That is what the OS had to hand the process for the call, allocator
  slack included; big tensors are `mmap`ed by glibc and handed back on free, so it tracks live tensors closely.
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys, time

METHODS = ("naive", "full_logits", "lean", "trl_fused")


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"): return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss():
    "Reset VmHWM to the current RSS (Linux >= 4.0); returns False where that is not allowed."
    try:
        with open("/proc/self/clear_refs", "w") as f: f.write("5")
        return True
    except OSError: return False


def make_inputs(rows, seq, completion, hidden, vocab, device, dtype, train_head, seed=0):
    import torch
    g = torch.Generator(device="cpu").manual_seed(seed)
    h = (torch.randn(rows, seq, hidden, generator=g) ).to(device=device, dtype=dtype).requires_grad_()
    W = (torch.randn(vocab, hidden, generator=g) / hidden**0.5).to(device=device, dtype=dtype).requires_grad_(train_head)
    labels = torch.randint(0, vocab, (rows, seq), generator=g).to(device)
    labels[:, : seq - completion] = -100
    coef = torch.randn(rows, generator=g).to(device)
    return h, W, labels, coef


def run_method(method, h, W, labels, coef):
    "Forward + backward of one method; returns the (rows,) log-probs (detached)."
    import torch
    from dpo_notes.logps import get_batch_logps, linear_logps, shift_labels
    targets, mask = shift_labels(labels)
    if method == "naive":
        logits = h @ W.t()
        logps = (logits[:, :-1].float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1) * mask).sum(-1)
    elif method == "full_logits":
        logps = get_batch_logps(h @ W.t(), labels)
    elif method == "lean":
        tok, _ = linear_logps(h[:, :-1][mask], W, None, targets[mask])
        logps = tok.new_zeros(h.shape[0]).index_add(0, mask.nonzero()[:, 0], tok)
    elif method == "trl_fused":
        from trl.kernels import ChunkedLogProbFunction
        from trl.kernels.chunked_logprob import _use_triton
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE
        compact = _use_triton(h.device)          # add_fused_lm_head scores only the masked positions on Triton devices
        hs, lab = h[:, :-1], labels[:, 1:]
        outs = ChunkedLogProbFunction.apply(
            hs[mask] if compact else hs.reshape(-1, hs.shape[-1]), W, None,
            lab[mask] if compact else lab.clamp(min=0).reshape(-1), 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0,
            ("log_probs", "entropy", "mean_logits", "is_top1"))
        tok = outs[0]
        per_token = tok.new_zeros(mask.shape).masked_scatter(mask, tok) if compact else tok.view(mask.shape).masked_fill(~mask, 0)
        logps = per_token.sum(-1)
    else: raise ValueError(f"unknown method {method!r}, expected one of {METHODS}")
    (logps * coef).sum().backward()
    return logps.detach()


def measure(method, vocab, a):
    "Peak extra memory (MB) and median time (s) of `method` at `vocab`, in this process."
    import torch
    torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    h, W, labels, coef = make_inputs(a.rows, a.seq, a.completion, a.hidden, vocab, a.device, dtype, a.train_head)
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    def call():
        h.grad = W.grad = None
        out = run_method(method, h, W, labels, coef); sync(); return out
    logps = call()                                          # warm-up (allocator, kernels, Triton autotune)
    h.grad = W.grad = None
    import gc; gc.collect()
    if cuda:
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated()
        t0 = time.perf_counter(); call(); times = [time.perf_counter() - t0]
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        before = _status_kb("VmRSS")
        if not _reset_peak_rss(): raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs)")
        t0 = time.perf_counter(); call(); times = [time.perf_counter() - t0]
        peak = (_status_kb("VmHWM") - before) / 1024
    for _ in range(a.repeats - 1):                         # more timed calls (the measured call is the first)
        t0 = time.perf_counter(); call(); times.append(time.perf_counter() - t0)
    return dict(method=method, vocab=vocab, peak_mb=round(peak, 1), time_s=round(sorted(times)[len(times) // 2], 4),
                logps=[round(x, 4) for x in logps.float().cpu().tolist()])


def _shared_args(a):
    "The options a child process needs to rebuild the same inputs."
    args = [f"--{k}={getattr(a, k)}" for k in ("device", "dtype", "rows", "seq", "completion", "hidden", "repeats", "threads")]
    return args + (["--train-head"] if a.train_head else [])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu"); p.add_argument("--dtype", default="float32")
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 49152, 151936])
    p.add_argument("--rows", type=int, default=4, help="sequences: 2B (chosen + rejected)")
    p.add_argument("--seq", type=int, default=256); p.add_argument("--completion", type=int, default=128)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--train-head", action="store_true", help="the LM head requires grad (full fine-tuning)")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--repeats", type=int, default=1); p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json"); p.add_argument("--one", nargs=2, metavar=("METHOD", "VOCAB"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:                                              # the child process of a CPU measurement
        print(json.dumps(measure(a.one[0], int(a.one[1]), a))); return
    results = []
    for vocab in a.vocab:
        for m in a.methods:
            if a.device == "cpu":                          # a fresh process per measurement: RSS is per process
                args = [sys.executable, __file__, "--one", m, str(vocab)] + _shared_args(a)
                out = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
                if out.returncode: raise RuntimeError(out.stderr[-3000:])
                r = json.loads(out.stdout.strip().splitlines()[-1])
            else: r = measure(m, vocab, a)
            results.append(r)
            print(f"{m:12s} V={vocab:7d}  peak +{r['peak_mb']:9.1f} MB  {r['time_s']:8.3f} s", flush=True)
    info = dict(device=a.device, dtype=a.dtype, rows=a.rows, seq=a.seq, completion=a.completion, hidden=a.hidden,
                train_head=a.train_head, results=results)
    if a.json:
        with open(a.json, "w") as f: json.dump(info, f, indent=1)
    return info


if __name__ == "__main__":
    main()
