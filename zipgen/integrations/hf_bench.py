"""End-to-end decode benchmark of a transformers causal LM: one harness for the BF16 model and
its compressed twin (benchmarks/e2e.py, `zipgen bench-model`).

Per batch size: a random prompt (same tokens for both models), prefill into a static KV cache,
then greedy decoding where one decode step (forward + argmax + bookkeeping) is replayed from a
CUDA graph (graphs="graph"), run through torch.compile(mode="reduce-overhead") ("compile"), or
run eagerly ("eager", also the CPU mode used by the tests). Times are wall clock around the
decode loop after a synchronise; memory is torch.cuda's peak allocation during the run, plus,
for a compressed model, the driver memory zipgen's runtime holds for its scratch buffers and
split-K workspaces (zipgen.runtime.workspace_bytes), which torch does not count.

Agreement with the baseline is reported two ways: free-running (each model feeds itself its own
greedy tokens; one flipped argmax changes everything after it) and teacher-forced (the compressed
model is fed the baseline's tokens through the same decode steps, so every position compares
the two models' argmax after the same prefix, with the kernels of a decode step).
"""
from __future__ import annotations

import contextlib
import datetime
import inspect
import io
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch

from ..errors import InputError
from ..fileio import write_atomic
from ..report import human_bytes, table
from .. import runtime
from ..nn import ops
from ..nn.linear import ZipLinear
from ..nn.compressed import CompressedWeight
from .hf import weight_memory

MODES = ("graph", "compile", "eager")
# PyTorch's SDPA as it chooses (cuDNN attention on an H200: not deterministic run to run, so
# that two runs of one model differ after a few tokens; benchmarks/determinism.py), or only its
# math backend (deterministic: the same tokens every run, and the decode + cuBLAS path's equal
# to the BF16 model's)
ATTENTION = ("sdpa", "sdpa-math")
PATHS = {"auto": ops.AUTO, "fused": ops.FUSED, "decode": ops.DECODE}


@dataclass
class DecodeRun:
    label: str
    batch: int
    prompt: int
    new_tokens: int
    prefill_ms: float
    ms_per_step: float  # one decode step = one new token for every sequence of the batch
    tokens_per_s: float
    weight_bytes: int
    peak_bytes: int  # 0 on the CPU
    tokens: torch.Tensor = field(repr=False)  # [batch, new_tokens], greedy, on the CPU
    repeats_agree: bool = True  # every timed repeat generated these same tokens

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("tokens")
        return d


def attention(choice: str):
    """A context in which the model's attention uses `choice` (ATTENTION): enter it around
    everything, capture included (a CUDA graph keeps the kernels it was captured with)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if choice not in ATTENTION:
        raise InputError(f"attention must be one of {ATTENTION}, got {choice!r}")
    return sdpa_kernel([SDPBackend.MATH]) if choice == "sdpa-math" else contextlib.nullcontext()


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Decoder:
    """Static buffers around one model and batch size: the KV cache, the current token and
    position, the generated tokens. step() touches only these, so it can be captured."""

    def __init__(self, model, batch: int, prompt_len: int, new_tokens: int, mode: str,
                 forced: torch.Tensor | None = None):
        """forced: [batch, new_tokens] tokens to feed instead of the model's own argmax (teacher
        forcing); self.tokens still records the model's argmax at each position."""
        from transformers import StaticCache

        self.model, self.mode, self.batch = model, mode, batch
        device = self.device = model.device
        # +2: the warm-up steps before capture write two positions past the prompt
        self.cache = StaticCache(config=model.config, max_cache_len=prompt_len + new_tokens + 2)
        params = inspect.signature(model.forward).parameters
        # transformers renamed past_key_values to cache (5.17 has the first, 5.24 the second)
        self.kwargs = {"cache" if "cache" in params else "past_key_values": self.cache,
                       "use_cache": True}
        self.keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.index = torch.zeros(1, dtype=torch.long, device=device)
        self.new_tokens = new_tokens
        # +2 columns for the warm-up steps too
        self.tokens = torch.zeros(batch, new_tokens + 2, dtype=torch.long, device=device)
        self.forced = None
        if forced is not None:
            if forced.shape != (batch, new_tokens):
                raise InputError(f"forced tokens must be [{batch}, {new_tokens}], got "
                                 f"{list(forced.shape)}")
            self.forced = torch.zeros_like(self.tokens)
            self.forced[:, :new_tokens] = forced.to(device)
        self.forward = model.forward
        if mode == "compile":
            self.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=False)
        self.graph = None

    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor) -> None:
        self.cache.reset()  # in place: the graph keeps pointing at the same cache tensors
        n = prompt.shape[1]
        pos = torch.arange(n, device=self.device).expand(self.batch, n)
        logits = self.model(input_ids=prompt, position_ids=pos, **self.kwargs, **self.keep).logits
        self.tokens[:, :1] = logits[:, -1:].argmax(-1)
        self.ids.copy_(self.tokens[:, :1] if self.forced is None else self.forced[:, :1])
        self.pos.fill_(n)
        self.index.fill_(1)

    @torch.no_grad()
    def step(self) -> None:
        if self.mode == "compile":
            torch.compiler.cudagraph_mark_step_begin()
        logits = self.forward(input_ids=self.ids, position_ids=self.pos, **self.kwargs).logits
        predicted = logits[:, -1:].argmax(-1)
        self.tokens.index_copy_(1, self.index, predicted)
        self.ids.copy_(predicted if self.forced is None else self.forced.index_select(1, self.index))
        self.pos.add_(1)
        self.index.add_(1)

    def capture(self, prompt: torch.Tensor) -> None:
        """Warm up (kernels built, lazy allocations made), then capture one step."""
        self.prefill(prompt)
        if self.mode != "graph":
            for _ in range(2):
                self.step()
            return
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()

    def advance(self) -> None:
        """One decode step the way the timed runs take it: the captured graph if there is one."""
        self.graph.replay() if self.graph is not None else self.step()

    def run(self, prompt: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """(tokens, prefill seconds, decode seconds) of one greedy generation."""
        t0 = _sync(self.device)
        self.prefill(prompt)
        t1 = _sync(self.device)
        for _ in range(self.new_tokens - 1):
            self.advance()
        t2 = _sync(self.device)
        return self.tokens[:, :self.new_tokens].cpu(), t1 - t0, t2 - t1


def prompts(vocab_size: int, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Random token ids (the same for every model given the same arguments)."""
    g = torch.Generator().manual_seed(seed + batch)
    return torch.randint(0, vocab_size, (batch, length), generator=g)


def benchmark(model, label: str, batches=(1, 8, 32), prompt_len: int = 128,
              new_tokens: int = 256, mode: str = "graph", repeats: int = 2) -> list[DecodeRun]:
    """Greedy decoding of `new_tokens` after a `prompt_len` prompt at each batch size; the best
    of `repeats` timed runs, with the first one's tokens (repeats_agree: all gave the same,
    which a deterministic model does; a warning otherwise)."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    if new_tokens < 2:
        raise InputError("new_tokens must be at least 2 (one from the prefill, one decoded)")
    device = model.device
    if device.type != "cuda" and mode != "eager":
        raise InputError(f"mode {mode!r} needs a CUDA model; use mode 'eager' on {device}")
    weights = weight_memory(model).total
    compressed = any(isinstance(m, CompressedWeight) for m in model.modules())
    runs = []
    for batch in batches:
        prompt = prompts(model.config.vocab_size, batch, prompt_len).to(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        dec = Decoder(model, batch, prompt_len, new_tokens, mode)
        dec.capture(prompt)
        results = [dec.run(prompt) for _ in range(repeats)]
        tokens, prefill_s, _ = results[0]
        repeats_agree = all(torch.equal(tokens, r[0]) for r in results[1:])
        if not repeats_agree:
            warnings.warn(f"{label}, batch {batch}: the timed repeats generated different "
                          f"tokens: a kernel is not deterministic (on an H200, PyTorch's "
                          f"default SDPA backend; attention 'sdpa-math' is)", stacklevel=2)
        decode_s = min(r[2] for r in results)
        steps = new_tokens - 1
        peak = 0
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
            if compressed:
                peak += runtime.workspace_bytes(device)
        runs.append(DecodeRun(label, batch, prompt_len, new_tokens, 1000 * prefill_s,
                              1000 * decode_s / steps, batch * steps / decode_s, weights, peak,
                              tokens, repeats_agree))
        del dec
    return runs


def teacher_forced(model, baseline: list["DecodeRun"], mode: str = "graph",
                   predictions: list | None = None) -> list[float]:
    """Per baseline run: the share of positions where `model`'s argmax equals the baseline's
    greedy token when both have seen the same tokens (the baseline's), through the same
    decode-step kernels as the timed runs. predictions: a list to append `model`'s argmax
    tokens to ([batch, new_tokens] per run)."""
    shares = []
    for run in baseline:
        prompt = prompts(model.config.vocab_size, run.batch, run.prompt).to(model.device)
        dec = Decoder(model, run.batch, run.prompt, run.new_tokens, mode, forced=run.tokens)
        dec.capture(prompt)
        predicted, _, _ = dec.run(prompt)
        if predictions is not None:
            predictions.append(predicted)
        shares.append(float((predicted == run.tokens).float().mean()))
        del dec
    return shares


def agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(share of positions where the greedy tokens agree, mean index of the first difference
    per sequence, counting a sequence without difference as its length)."""
    same = a == b
    first = torch.where(same.all(1), torch.full_like(same[:, 0], a.shape[1], dtype=torch.long),
                        (~same).long().argmax(1))
    return float(same.float().mean()), float(first.float().mean())


def describe(device: torch.device) -> str:
    import transformers

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return (f"# card: {card}; torch {torch.__version__}, transformers {transformers.__version__}\n"
            f"# date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}\n"
            f"# command: {' '.join(sys.argv)}")


def report(baseline: list[DecodeRun], compressed: list[DecodeRun],
           forced: list[float]) -> tuple[str, list[dict]]:
    """A table comparing the two (forced: teacher_forced's shares), and the rows as dicts (for
    --json)."""
    rows, out = [], []
    for b, c, f in zip(baseline, compressed, forced, strict=True):
        agree, first = agreement(b.tokens, c.tokens)
        rows.append([c.batch, f"{b.tokens_per_s:.1f}", f"{c.tokens_per_s:.1f}",
                     f"{c.tokens_per_s / b.tokens_per_s:.3f}", f"{b.ms_per_step:.3f}",
                     f"{c.ms_per_step:.3f}", human_bytes(b.weight_bytes),
                     human_bytes(c.weight_bytes), human_bytes(b.peak_bytes),
                     human_bytes(c.peak_bytes), f"{100 * agree:.1f}%", f"{first:.1f}",
                     f"{100 * f:.1f}%"])
        out.append({"baseline": b.as_dict(), "compressed": c.as_dict(), "agreement": agree,
                    "first_difference": first, "teacher_forced_agreement": f})
    text = table(["batch", "BF16 tok/s", "zipgen tok/s", "speedup", "BF16 ms/step",
                  "zipgen ms/step", "BF16 weights", "zipgen weights", "BF16 peak",
                  "zipgen peak", "greedy agree", "1st diff", "forced agree"], rows,
                 align="r" * 13)
    return text, out


def summarize(processes: list[list[dict]]) -> tuple[str, list[dict]]:
    """report()'s rows from several processes of the same comparison, per batch size: the
    median and range of each model's tokens/s and of the speedup. One process's figures can
    be off by several percent (cuBLAS picks its kernels per process: the BF16 step at batch 1
    moved 8 % between three H200 processes, BENCHMARKS.md thirteenth session)."""
    if not processes or any(not rows for rows in processes):
        raise InputError("summarize needs at least one process with rows")
    by_batch: dict[int, list[dict]] = {}
    for rows in processes:
        for row in rows:
            by_batch.setdefault(row["compressed"]["batch"], []).append(row)
    out, lines = [], []
    for batch, rows in sorted(by_batch.items()):
        bf16 = [r["baseline"]["tokens_per_s"] for r in rows]
        zg = [r["compressed"]["tokens_per_s"] for r in rows]
        speedup = [z / b for z, b in zip(zg, bf16)]
        entry = {"batch": batch, "processes": len(rows),
                 "bf16_tokens_per_s": statistics.median(bf16),
                 "zipgen_tokens_per_s": statistics.median(zg),
                 "speedup": statistics.median(speedup),
                 "speedup_range": [min(speedup), max(speedup)]}
        out.append(entry)
        lines.append([batch, len(rows), f"{entry['bf16_tokens_per_s']:.1f} ({min(bf16):.1f}–"
                      f"{max(bf16):.1f})", f"{entry['zipgen_tokens_per_s']:.1f} ({min(zg):.1f}–"
                      f"{max(zg):.1f})", f"{entry['speedup']:.3f} ({min(speedup):.3f}–"
                      f"{max(speedup):.3f})"])
    text = table(["batch", "processes", "BF16 tok/s median (range)",
                  "zipgen tok/s median (range)", "speedup median (range)"], lines,
                 align="rrrrr")
    return text, out


def runs_table(runs: list[DecodeRun]) -> tuple[str, list[dict]]:
    """A table of one model's runs (no baseline to compare with), and the rows as dicts."""
    rows = [[r.batch, f"{r.tokens_per_s:.1f}", f"{r.ms_per_step:.3f}", f"{r.prefill_ms:.1f}",
             human_bytes(r.weight_bytes), human_bytes(r.peak_bytes)] for r in runs]
    text = table(["batch", "tok/s", "ms/step", "prefill ms", "weights", "peak"], rows,
                 align="r" * 6)
    return text, [r.as_dict() for r in runs]


def set_gemm_path(model, path: str) -> None:
    """Make every ZipLinear use the automatic choice, the fused kernel or decode + cuBLAS."""
    for m in model.modules():
        if isinstance(m, ZipLinear):
            m.fused = PATHS[path]


def compare(model, to_compressed, *, batches=(1, 8, 32), prompt_len=128, new_tokens=256,
            mode="graph", path="auto", log=print,
            tokens_out: str | None = None) -> tuple[str, list[dict]]:
    """Benchmark the BF16 `model`, convert it in place with to_compressed(model) (returns a
    one-line summary), benchmark it again with the same harness; (table, rows). tokens_out: a
    file to torch.save every generated token to ({"bf16" | "zipgen" | "forced": {batch:
    [batch, new_tokens]}}), to compare runs bit for bit (same seeds: same tokens)."""
    log(f"# BF16: {weight_memory(model)}")
    baseline = benchmark(model, "bf16", batches, prompt_len, new_tokens, mode)
    started = time.perf_counter()
    summary = to_compressed(model)
    log(f"# compressed in {time.perf_counter() - started:.1f} s: {summary}")
    if model.device.type == "cuda":
        torch.cuda.empty_cache()  # the BF16 weights' blocks go back before peaks are measured
    set_gemm_path(model, path)
    log(f"# zipgen ({path} GEMM path): {weight_memory(model)}")
    compressed = benchmark(model, "zipgen", batches, prompt_len, new_tokens, mode)
    predictions = []
    forced = teacher_forced(model, baseline, mode, predictions)
    if tokens_out is not None:
        save_tokens(tokens_out, {"bf16": [r.tokens for r in baseline],
                                 "zipgen": [r.tokens for r in compressed],
                                 "forced": predictions}, batches)
    return report(baseline, compressed, forced)


def save_tokens(path: str, runs: dict, batches) -> None:
    """torch.save {name: {batch: tokens}} to `path`, atomically."""
    buf = io.BytesIO()
    torch.save({name: dict(zip(batches, tokens, strict=True)) for name, tokens in runs.items()},
               buf)
    write_atomic(path, buf.getvalue())
