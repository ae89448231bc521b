"""How an LLM replica picks the work of each iteration, and how it holds KV cache: the policies of real
engines, named for what they model, for the simulator's decode and aggregated pools (`pools.LlmPool`).

Batching policy (`Scheduler.policy`):
- `prefill-first`: at an iteration boundary, waiting prompts (whole, up to the token budget) run as one
  prefill-only iteration and the running sequences stall for it. vLLM V0's scheduler without chunked
  prefill (`--no-enable-chunked-prefill`), Orca's iteration-level scheduling, terrazzo's builtin engine.
- `chunked`: every iteration has a token budget (vLLM's `max_num_batched_tokens`). The running decodes
  take one token each, then prompts already being prefilled take chunks of what is left (oldest first),
  then waiting prompts are admitted with chunks of the rest; decodes never stall behind a long prompt.
  Sarathi-Serve's stall-free batching (OSDI '24) and vLLM V1's scheduler, where chunked prefill is the
  default (docs.vllm.ai/en/latest/configuration/optimization.html, "Chunked Prefill"). Checked against
  Vidur's Sarathi replica scheduler (github.com/microsoft/vidur@7d47513, vidur/scheduler/replica_scheduler/
  sarathi_replica_scheduler.py): the same order, decodes counted in the budget, chunks of what is left,
  the cap on sequences holding KV, the prompt's last chunk giving the first token, preemption of the
  latest by recompute. Vidur differs only when KV runs short: it takes a new prompt's whole blocks on
  admission, keeps 1 % of the blocks back from admissions and wants a free block for every decode,
  where vLLM V1, modelled here, allocates blocks as chunks and tokens need them.
- `inflight`: every running decode takes one token and whole waiting prompts join the same iteration
  while they fit the budget the decodes leave; a prompt that does not fit waits, and decodes never
  stall. TensorRT-LLM's in-flight batching with chunked context off, its default.

KV policy (`Scheduler.kv`):
- `paged`: PagedAttention's block manager. Blocks of `block_size` tokens are allocated as a sequence's
  context grows; when a step cannot get its blocks, the most recently admitted running sequence is
  preempted: its blocks are freed and it goes back to the head of the queue, to recompute its prompt
  and the tokens it had generated when re-admitted (vLLM's preemption by recompute; prefix caching of
  the freed blocks is not modelled). Admitting a waiting prompt never preempts: it waits for blocks.
- `reserve`: a sequence reserves its whole context (prompt + output) when admitted and is never
  preempted: TensorRT-LLM's GUARANTEED_NO_EVICT capacity scheduler, and the simulator before paging.

`max_num_seqs` caps the sequences running at once (vLLM's `--max-num-seqs`; the plan's batch).

Event cost: an iteration that prefills is one event; between two changes of the decode batch every
step is the same, so a span of k decode-only steps is one event (k up to the first finish, shortened
so that the span's KV growth fits its blocks). The blocks a decoding batch needs at a step are a sum
over the batch, kept as a running sum and a histogram of context residues modulo the block size, so
checking a span costs O(min(batch, block size)), not O(batch) per step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Any, Protocol

from terrazzo.catalog.engines import Engine, EngineVersion


class IterationCost(Protocol):
    """What a lane asks of its replica's cost: the latency of the iteration it composed. `service_times.LlmCost`
    (terrazzo's cost model) is one; bench/vidur_cost.py (Vidur's profiled A100 kernels) another."""

    def decode_step_s(self, batch: int, context: float) -> float: ...

    def prefill_s(self, tokens: float, sum_sq: float) -> float: ...

    def mixed_step_s(self, batch: int, context: float, tokens: float, sum_sq: float) -> float: ...

    def context_read_s(self, cached_tokens: float, pairs: float) -> float: ...


PREFILL_FIRST, CHUNKED, INFLIGHT = "prefill-first", "chunked", "inflight"
PAGED, RESERVE = "paged", "reserve"
POLICIES, KV_POLICIES = (PREFILL_FIRST, CHUNKED, INFLIGHT), (PAGED, RESERVE)


@dataclass(frozen=True)
class Scheduler:
    """One pool's scheduler. `kv_blocks` None: as many blocks as the memory beside the weights holds."""

    policy: str = PREFILL_FIRST
    kv: str = RESERVE
    max_num_seqs: int = 256
    max_batched_tokens: int = 8192
    block_size: int = 16
    kv_blocks: int | None = None
    engine: EngineVersion | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown scheduler policy {self.policy!r}; use one of {', '.join(POLICIES)}")
        if self.kv not in KV_POLICIES:
            raise ValueError(f"unknown KV policy {self.kv!r}; use one of {', '.join(KV_POLICIES)}")
        if min(self.max_num_seqs, self.max_batched_tokens, self.block_size) < 1:
            raise ValueError("max_num_seqs, max_batched_tokens and block_size must be at least 1")
        if self.kv_blocks is not None and self.kv_blocks < 1:
            raise ValueError(f"kv_blocks must be at least 1, got {self.kv_blocks}")

    @property
    def label(self) -> str:
        engine = f"{self.engine} " if self.engine else ""
        return (f"{engine}{self.policy} (budget {self.max_batched_tokens} tokens, ≤ {self.max_num_seqs} seqs, "
                f"KV {self.kv}" + (f" {self.block_size}-token blocks" if self.kv == PAGED else "") + ")")


# What each engine does by default, with where that is documented. An engine not listed keeps the
# simulator's previous policy (whole prompts first, whole context reserved).
ENGINE_DEFAULTS: dict[Engine, dict[str, Any]] = {
    Engine.VLLM: dict(policy=CHUNKED, kv=PAGED, block_size=16, max_batched_tokens=2048,
                      source="vllm 0.32.0: chunked prefill on by default in V1, preemption by recompute "
                             "(docs.vllm.ai/en/latest/configuration/optimization.html); the API server's "
                             "max_num_batched_tokens 2048 (8192 on H100/H200-class GPUs, vllm/engine/arg_utils.py); "
                             "block size 16 on GPUs, 128 on CPUs (vllm/platforms/cpu.py)"),
    Engine.SGLANG: dict(policy=CHUNKED, kv=PAGED, block_size=1, max_batched_tokens=8192,
                        source="https://docs.sglang.ai/advanced_features/server_arguments.html (chunked_prefill_size, "
                               "set from GPU memory; token-level KV pool; requests retracted when it runs out)"),
    Engine.TRTLLM: dict(policy=INFLIGHT, kv=RESERVE, block_size=64, max_batched_tokens=8192,
                        source="https://nvidia.github.io/TensorRT-LLM/torch/scheduler.html (capacity scheduler "
                               "GUARANTEED_NO_EVICT by default; chunked context off unless enabled); in-flight "
                               "batching runs context requests in the same forward pass as generation requests, "
                               "within max_num_tokens (nvidia.github.io/TensorRT-LLM/features/"
                               "paged-attention-ifb-scheduler.html)"),
    Engine.BUILTIN: dict(policy=PREFILL_FIRST, kv=RESERVE, source="terrazzo/runtime/executors/llm_engine.py"),
}


def engine_scheduler(engine: EngineVersion | None, max_num_seqs: int, **override: Any) -> Scheduler:
    """The engine's default scheduler with `max_num_seqs` (and any field in `override`)."""
    base = dict(ENGINE_DEFAULTS.get(engine.engine, {})) if engine else {}
    base.update({k: v for k, v in override.items() if v is not None})
    return Scheduler(max_num_seqs=max_num_seqs, engine=engine, **base)


class BlockManager:
    """Paged KV of one lane: `total` blocks of `block_size` tokens.

    Two kinds of holder: a sequence being prefilled holds `seq.blocks` explicitly (`allocate`/`free`);
    the decoding batch holds, at lane step s, Σ ceil((ctx0 + s) / block_size) over its sequences (the
    blocks their next step writes into), kept implicitly (`join`/`leave`) so that a span of steps is
    checked without touching every sequence. `preempt` picks the victim: the latest admitted. Prefixes
    that the KV-cache layer pins between an agent's calls (`sim/kv_lanes.py`) are taken from `total`
    (`pin`); `capacity` is the lane's whole KV.
    """

    __slots__ = ("base_sum", "block_size", "capacity", "fixed", "n", "residues", "total")

    def __init__(self, total: int, block_size: int) -> None:
        self.total, self.block_size = total, block_size
        self.capacity = total
        self.fixed = 0  # blocks held by sequences being prefilled
        self.n = 0  # decoding sequences
        self.base_sum = 0  # Σ ctx0 over them
        self.residues: dict[int, int] = {}  # ctx0 mod block_size -> count

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def pin(self, blocks: int) -> None:
        """`blocks` of the lane's KV are held by pinned prefixes (a running batch over the rest is preempted)."""
        self.total = self.capacity - blocks

    # explicit holders (prefill) -----------------------------------------------------------------

    def allocate(self, seq: Any, tokens: int, decode_step: int) -> bool:
        """Grow `seq`'s blocks to hold `tokens`; False (nothing changes) when the blocks are not free."""
        extra = self.blocks_for(tokens) - seq.blocks
        if extra > 0:
            if self.fixed + extra + self.decode_blocks(decode_step) > self.total:
                return False
            self.fixed += extra
            seq.blocks += extra
        return True

    def free(self, seq: Any) -> None:
        self.fixed -= seq.blocks
        seq.blocks = 0

    # the decoding batch -------------------------------------------------------------------------

    def join(self, ctx0: int) -> None:
        self.n += 1
        self.base_sum += ctx0
        r = ctx0 % self.block_size
        self.residues[r] = self.residues.get(r, 0) + 1

    def leave(self, ctx0: int) -> None:
        self.n -= 1
        self.base_sum -= ctx0
        r = ctx0 % self.block_size
        left = self.residues[r] - 1
        if left:
            self.residues[r] = left
        else:
            del self.residues[r]

    def decode_blocks(self, step: int) -> int:
        """Σ ceil((ctx0 + step) / bs) = (Σctx0 + n·step + Σ ((−(ctx0 + step)) mod bs)) / bs, exactly."""
        if self.n == 0:
            return 0
        bs = self.block_size
        pad = sum(c * ((-(r + step)) % bs) for r, c in self.residues.items())
        return (self.base_sum + self.n * step + pad) // bs

    def decode_steps_that_fit(self, step: int, k: int) -> int:
        """How many of the decode steps step … step+k−1 get their blocks (0 when even the first does not)."""
        room = self.total - self.fixed
        bs = self.block_size
        if (self.base_sum + self.n * (step + k - 1)) // bs + self.n <= room:  # upper bound: every step fits
            return k
        if self.decode_blocks(step) > room:
            return 0
        lo, hi = 1, k  # the first fits; find the last that does
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.decode_blocks(step + mid - 1) <= room else (lo, mid - 1)
        return lo

    def free_blocks(self, step: int) -> int:
        return self.total - self.fixed - self.decode_blocks(step)


class AdmissionOrder:
    """Running sequences in the order they were admitted, newest last: who is preempted first. Entries
    of sequences that finished or were preempted are skipped lazily and compacted away."""

    __slots__ = ("_live", "_stack")

    def __init__(self) -> None:
        self._stack: list[tuple[Any, int]] = []
        self._live = 0

    def push(self, seq: Any) -> None:
        self._stack.append((seq, seq.gen))
        self._live += 1

    def gone(self) -> None:
        """A running sequence finished (its entry stays until compaction)."""
        self._live -= 1
        if len(self._stack) > 2 * self._live + 64:
            self._stack = [(s, g) for s, g in self._stack if s.gen == g and s.state > 0]

    def pop_newest(self, alive: Callable[[Any], bool]) -> Any | None:
        while self._stack:
            seq, gen = self._stack.pop()
            if seq.gen == gen and alive(seq):
                self._live -= 1
                return seq
        return None


class Lane:
    """One lane of a decode or aggregated pool (a replica, or a pipeline stage's micro-batch slot): its
    queue, its decoding batch, the prompts it is prefilling, and the iteration being run.

    `compose()` picks the next iteration at a boundary and returns (seconds per step, steps), or None
    when there is nothing to run; `complete()` applies it and returns the sequences that finished. The
    pool (`pools.LlmPool`) owns the clock; this class owns the engine's rules.
    """

    __slots__ = ("blocks", "busy_s", "chunked", "chunks", "cost", "ctx_base", "dt", "inflight", "k", "kv_tokens",
                 "kv_used", "max_seqs", "n", "occ_s", "occupied", "order", "paged", "preemptions", "prefilling",
                 "running", "sched", "span", "steps", "t0", "tiebreak", "timer", "tokens", "waiting")

    def __init__(self, sched: Scheduler, cost: IterationCost, kv_tokens: float) -> None:
        self.sched, self.cost = sched, cost
        self.chunked, self.paged = sched.policy == CHUNKED, sched.kv == PAGED
        self.inflight = sched.policy == INFLIGHT
        self.max_seqs, self.tokens = sched.max_num_seqs, sched.max_batched_tokens
        self.kv_tokens = kv_tokens
        blocks = sched.kv_blocks if sched.kv_blocks is not None else int(min(kv_tokens, 1 << 40) // sched.block_size)
        self.blocks = BlockManager(max(blocks, 0), sched.block_size)
        self.kv_used = 0  # reserve: tokens reserved
        self.waiting: deque[Any] = deque()
        self.running: list[tuple[int, int, Any, int]] = []  # heap of (end step, tiebreak, seq, gen)
        self.n = 0  # sequences decoding
        self.steps = 0  # decode steps done: a decoding sequence's context is ctx0 + steps
        self.ctx_base = 0  # Σ ctx0 over the decoding batch
        self.prefilling: list[Any] = []  # admitted, prompt not yet fully computed, oldest first
        self.order = AdmissionOrder()
        self.chunks: list[tuple[Any, int]] = []  # prefill work of the iteration in progress
        self.k = 0  # decode steps the iteration in progress advances (0: a prefill-only iteration)
        self.t0, self.dt = -1.0, 0.0  # start of the iteration in progress (-1: idle) and its step time
        self.span = 0  # steps in the iteration in progress (a decode span has several)
        self.occupied = 0  # sequences in it (running + prefilling), for occupancy
        self.timer: Any = None
        self.busy_s = self.occ_s = 0.0
        self.preemptions = 0
        self.tiebreak = 0

    # admission ----------------------------------------------------------------------------------

    def check_fits(self, seq: Any) -> None:
        """A sequence whose whole context cannot fit the lane's KV can never finish: say so up front."""
        if self.paged and self.blocks.blocks_for(seq.isl + seq.osl) > self.blocks.capacity:
            raise ValueError(f"a sequence of {seq.isl} + {seq.osl} tokens needs "
                             f"{self.blocks.blocks_for(seq.isl + seq.osl)} KV blocks of {self.sched.block_size} "
                             f"tokens; the lane has {self.blocks.capacity}")

    def _room(self, seq: Any, tokens: int, running: int) -> bool:
        """Reserve KV for admitting `seq` with its first `tokens` tokens (paged) or its whole context."""
        if not self.paged:
            if self.kv_used + seq.kv <= self.kv_tokens or running == 0:
                self.kv_used += seq.kv
                return True
            return False
        return self.blocks.allocate(seq, tokens, self.steps)

    def admissible(self) -> bool:
        """Whether the head of the queue could start at the next boundary (a reason to cut a decode span)."""
        if not self.waiting or self.n + len(self.prefilling) >= self.max_seqs:
            return False
        head = self.waiting[0]
        if self.inflight and self.n and not self._fits_beside_decodes(head.need - head.done):
            return False
        if not self.paged:
            return self.kv_used + head.kv <= self.kv_tokens or self.n + len(self.prefilling) == 0
        first = head.need if head.done == head.need else min(head.need, self.tokens) if self.chunked else head.need
        return self.blocks.blocks_for(first + (1 if head.done == head.need else 0)) <= self.blocks.free_blocks(
            self.steps)

    def _admit(self, seq: Any, now: float) -> None:
        self.waiting.popleft()
        if seq.t_admit < 0:
            seq.t_admit = now
        self.order.push(seq)

    def _join(self, seq: Any) -> None:
        """Start decoding `seq` at the current step boundary (it holds `out` generated tokens)."""
        seq.state = 2
        seq.ctx0 = ctx0 = seq.isl + seq.out - self.steps
        seq.end_step = self.steps + seq.osl - seq.out
        self.ctx_base += ctx0
        self.n += 1
        if self.paged:
            self.blocks.free(seq)
            self.blocks.join(ctx0)
        self.tiebreak += 1
        heappush(self.running, (seq.end_step, self.tiebreak, seq, seq.gen))

    def _admit_decode(self, now: float) -> bool:
        """Admit the queue's head if its KV is already here (a decode pool); False if it is not or has no room."""
        seq = self.waiting[0]
        if seq.done != seq.need or self.n + len(self.prefilling) >= self.max_seqs:
            return False
        if self.paged:
            if self.blocks.blocks_for(seq.isl + seq.out) > self.blocks.free_blocks(self.steps):
                return False
        elif not self._room(seq, 0, self.n + len(self.prefilling)):
            return False
        self._admit(seq, now)
        self._join(seq)
        return True

    # preemption ---------------------------------------------------------------------------------

    def _preempt_newest(self) -> None:
        seq = self.order.pop_newest(lambda s: s.state > 0)
        if seq is None:
            raise RuntimeError("KV blocks ran out with nothing left to preempt")
        if seq.state == 2:
            self.n -= 1
            self.ctx_base -= seq.ctx0
            self.blocks.leave(seq.ctx0)
            seq.out = seq.ctx0 + self.steps - seq.isl
        else:
            self.blocks.free(seq)
            self.prefilling.remove(seq)
        seq.gen += 1
        seq.state = 0
        seq.need, seq.done = seq.isl + seq.out, 0  # recompute the prompt and what it had generated
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)

    # composing an iteration ---------------------------------------------------------------------

    def compose(self, now: float) -> tuple[float, int] | None:
        """The next iteration: (seconds per step, steps), or None when the lane has nothing to run."""
        self.chunks = []
        while True:
            while self.waiting and self._admit_decode(now):
                pass
            got = (self._compose_chunked(now) if self.chunked else self._compose_inflight(now) if self.inflight
                   else self._compose_prefill_first(now))
            if got is not None:
                return got
            if self.n:
                span = self._decode_span()
                if span is not None:
                    return span
            elif self.prefilling:  # partial prompts hold every block and none can grow: free the newest
                self._preempt_newest()
            else:
                return None

    def _compose_prefill_first(self, now: float) -> tuple[float, int] | None:
        tokens, sq = self._whole_prompts(now, self.tokens)
        if not self.chunks:
            return None
        self.k = 0  # the running sequences stall for this iteration
        return self.cost.prefill_s(tokens, sq) + self._reads(), 1

    def _compose_inflight(self, now: float) -> tuple[float, int] | None:
        """Whole waiting prompts in the same iteration as one step of every running decode, within the
        token budget: in-flight batching without chunked context. Decodes never stall; a prompt that does
        not fit waits for decodes to finish."""
        if self.n and self.paged:  # the decodes step in this iteration: they need their blocks first
            while self.n and self.blocks.decode_steps_that_fit(self.steps, 1) == 0:
                self._preempt_newest()
        tokens, sq = self._whole_prompts(now, self.tokens - self.n)
        return self._with_decodes(tokens, sq) if self.chunks else None

    def _whole_prompts(self, now: float, budget: int) -> tuple[int, int]:
        """Admit waiting prompts whole, oldest first, while they fit `budget` tokens; (tokens, Σ attention
        pairs). A prompt over the whole token budget goes alone when it reaches the head (else it never runs)."""
        waiting, chunks = self.waiting, self.chunks
        tokens = sq = 0
        while waiting and self.n + len(self.prefilling) < self.max_seqs:
            seq = waiting[0]
            c = seq.need - seq.done
            if (c == 0 or (tokens + c > budget and (chunks or c <= self.tokens))
                    or not self._room(seq, seq.need, self.n + len(self.prefilling))):
                break
            self._admit(seq, now)
            seq.state = 1
            self.prefilling.append(seq)
            chunks.append((seq, c))
            tokens += c
            sq += c * c + 2 * c * seq.done
        return tokens, sq

    def _fits_beside_decodes(self, prompt_tokens: int) -> bool:
        """Whether a whole prompt fits the budget the running decodes leave (one token each), or is over
        the whole budget and so goes alone (`_whole_prompts`)."""
        return prompt_tokens <= self.tokens - self.n or prompt_tokens > self.tokens

    def _with_decodes(self, tokens: int, sq: int) -> tuple[float, int]:
        """The iteration of this prefill work beside one step of every running decode."""
        self.k = 1 if self.n else 0
        if self.n == 0:
            return self.cost.prefill_s(tokens, sq) + self._reads(), 1
        return self.cost.mixed_step_s(self.n, self.ctx_base / self.n + self.steps, tokens, sq) + self._reads(), 1

    def _compose_chunked(self, now: float) -> tuple[float, int] | None:
        chunks, blocks, paged = self.chunks, self.blocks, self.paged
        if self.n and paged:
            while self.n and blocks.decode_steps_that_fit(self.steps, 1) == 0:
                self._preempt_newest()
        budget = self.tokens - self.n
        tokens = sq = 0
        for seq in self.prefilling:  # prompts already being prefilled, oldest first
            if budget <= 0:
                break
            c = min(seq.need - seq.done, budget)
            if paged and not blocks.allocate(seq, seq.done + c, self.steps):
                c = min(c, (seq.blocks + blocks.free_blocks(self.steps)) * blocks.block_size - seq.done)
                if c <= 0 or not blocks.allocate(seq, seq.done + c, self.steps):
                    break
            chunks.append((seq, c))
            budget -= c
            tokens += c
            sq += c * c + 2 * c * seq.done
        waiting = self.waiting
        while waiting and budget > 0 and self.n + len(self.prefilling) < self.max_seqs:
            seq = waiting[0]
            c = min(seq.need - seq.done, budget)
            if c == 0 or not self._room(seq, seq.done + c, self.n + len(self.prefilling)):
                break
            self._admit(seq, now)
            seq.state = 1
            self.prefilling.append(seq)
            chunks.append((seq, c))
            budget -= c
            tokens += c
            sq += c * c + 2 * c * seq.done
        return self._with_decodes(tokens, sq) if chunks else None

    def _reads(self) -> float:
        """The measured extra of this iteration's chunks that attend to KV already cached (service_times)."""
        cached = pairs = 0
        for seq, c in self.chunks:
            if seq.done:
                cached += seq.done
                pairs += c * seq.done
        return self.cost.context_read_s(cached, pairs) if cached else 0.0

    def _decode_span(self) -> tuple[float, int] | None:
        """Decode-only steps until the first sequence finishes (or its KV growth stops fitting); None when
        preemption emptied the batch (the caller composes again)."""
        if self.paged:
            while self.n and self.blocks.decode_steps_that_fit(self.steps, 1) == 0:
                self._preempt_newest()
            if self.n == 0:
                return None
        running = self.running
        while running[0][2].gen != running[0][3]:
            heappop(running)  # preempted since it was pushed
        k = max(1, running[0][0] - self.steps)
        if self.admissible():
            k = 1  # a waiting sequence joins at the next boundary
        if self.paged:
            k = self.blocks.decode_steps_that_fit(self.steps, k)
        self.k = k
        return self.cost.decode_step_s(self.n, self.ctx_base / self.n + self.steps + (k - 1) / 2), k

    # completing an iteration --------------------------------------------------------------------

    def complete(self, k: int, now: float) -> list[Any]:
        """Apply the iteration in progress, cut to `k` steps; return the sequences that finished."""
        finished: list[Any] = []
        if self.k:
            self.steps += k
            running = self.running
            while running and running[0][0] <= self.steps:
                _, _, seq, gen = heappop(running)
                if seq.gen != gen:
                    continue
                self.n -= 1
                self.ctx_base -= seq.ctx0
                if self.paged:
                    self.blocks.leave(seq.ctx0)
                seq.out = seq.osl
                finished.append(seq)
        if self.chunks:
            done_prefill = False
            for seq, c in self.chunks:
                seq.done += c
                if seq.done < seq.need:
                    continue
                done_prefill = True
                if seq.t_first < 0:
                    seq.t_first = now
                seq.out += 1  # the prompt's (or the recompute's) last position gives a token
                if seq.out >= seq.osl:
                    if self.paged:
                        self.blocks.free(seq)
                    finished.append(seq)
                    seq.state = -1
                else:
                    self._join(seq)
            if done_prefill:
                self.prefilling = [s for s in self.prefilling if s.state == 1]
            self.chunks = []
        for seq in finished:
            seq.state = -1
            self.order.gone()
            if not self.paged:
                self.kv_used -= seq.kv
        return finished

    def in_system(self) -> int:
        return len(self.waiting) + self.n + len(self.prefilling)
