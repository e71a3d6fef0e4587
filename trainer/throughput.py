"""Honest training speed: tokens/s and ETA from steady-state optimizer steps, apart from compilation.

The first steps of a compiled run include ``torch.compile``'s work (about a minute for a 7B on a GPU):
counting them as training time made step 1 of a 65 s run print an ETA of 27 minutes and the summary a
seventh of the steady speed. :class:`Throughput` keeps the first ``warmup_steps`` apart ("compiling"),
estimates the compile time from them, and gives tokens/s and ETA over a moving window of the later steps.
Evaluations are timed apart (:meth:`Throughput.add_eval`): the ETA adds the evaluations still to come at the
last one's duration (before the first one, an estimate: its tokens at the forward speed, :func:`forward_share`;
with compiled layers the first evaluation compiles their no-grad graphs, so it is left out as the first steps
are), and a step's wall time leaves out the evaluation before it.
"""

from __future__ import annotations

from collections import deque

#: Steps treated as warm-up when the decoder layers are compiled: the first compiles the forward and
#: backward graphs, the second can still add a guard-failure recompile (eval or a first short row).
COMPILE_WARMUP_STEPS = 2
#: Steady steps that tokens/s and the ETA average over.
WINDOW = 20


def forward_share(gradient_checkpointing: bool) -> float:
    """The forward pass's share of a training step's time: backward ≈ 2 forwards, and gradient checkpointing
    runs the forward again in the backward. An evaluation's tokens take about this share of their training
    time: the estimate of an evaluation before one has been timed."""
    return 1 / 4 if gradient_checkpointing else 1 / 3


class Throughput:
    """Per-step timing of one training invocation.

    Args:
        total: the run's last optimizer step (1-based count); start: steps already done before this
            invocation (resume); warmup_steps: this invocation's first steps kept out of the speed
            (compilation, CUDA start-up); window: steady steps averaged for tokens/s and ETA; eval_tokens:
            the tokens of one evaluation and share: the forward's share of a step (:func:`forward_share`),
            for its estimate until :meth:`add_eval` times one; eval_warmup: this invocation's first evaluations
            whose time says nothing of the later ones (compilation).

    Call :meth:`add` once per optimizer step with that step's tokens, its training seconds (forward,
    backward, optimizer) and its wall seconds since the previous step ended (adds checkpoints and logging;
    an evaluation reported with :meth:`add_eval` is taken out). All times in seconds, speeds in tokens per second.
    """

    def __init__(self, total: int, start: int = 0, warmup_steps: int = 0, window: int = WINDOW,
                 eval_tokens: int = 0, share: float = forward_share(False), eval_warmup: int = 0) -> None:
        self.total, self.done, self.warmup_steps, self.eval_tokens = total, start, warmup_steps, eval_tokens
        self.share, self.eval_warmup, self.evals_seen = share, eval_warmup, 0
        self.seen = 0
        self.warmup_wall = 0.0
        self.warmup_tokens = 0
        self.steady_tokens, self.steady_train_s = 0, 0.0
        self._win: deque[tuple[int, float, float]] = deque(maxlen=max(1, window))
        self.eval_s: float | None = None
        self._eval_since_step = 0.0

    def add_eval(self, seconds: float) -> None:
        """An evaluation took ``seconds`` (wall): the ETA's figure for each one still to come, once the first
        ``eval_warmup`` have been seen."""
        self.evals_seen += 1
        if self.evals_seen > self.eval_warmup:
            self.eval_s = seconds
        self._eval_since_step += seconds

    def add(self, tokens: int, train_s: float, wall_s: float) -> None:
        self.done += 1
        self.seen += 1
        wall_s, self._eval_since_step = max(0.0, wall_s - self._eval_since_step), 0.0
        if self.seen <= self.warmup_steps:
            self.warmup_wall += wall_s
            self.warmup_tokens += tokens
            return
        self.steady_tokens += tokens
        self.steady_train_s += train_s
        self._win.append((tokens, train_s, wall_s))

    @property
    def warming_up(self) -> bool:
        """True until a steady step has been seen (no honest speed yet)."""
        return not self._win

    def tokens_per_s(self) -> float | None:
        """Tokens per training second over the window, ``None`` during warm-up."""
        if not self._win:
            return None
        t = sum(w[1] for w in self._win)
        return sum(w[0] for w in self._win) / t if t > 0 else None

    def eta_s(self, evals_left: int = 0) -> float | None:
        """Seconds left: remaining steps × the window's mean wall seconds a step, plus ``evals_left`` ×
        :meth:`eval_estimate_s`; ``None`` during warm-up."""
        if not self._win:
            return None
        steps = (self.total - self.done) * sum(w[2] for w in self._win) / len(self._win)
        return steps + evals_left * self.eval_estimate_s()

    def eval_estimate_s(self) -> float:
        """Seconds of one evaluation: the last one's, else (none timed yet) ``eval_tokens`` at the window's
        training speed divided by ``share`` (a forward pass only); 0 without a speed."""
        if self.eval_s is not None:
            return self.eval_s
        tps = self.tokens_per_s()
        return self.eval_tokens * self.share / tps if tps else 0.0

    def steady_tokens_per_s(self) -> float | None:
        """Tokens per training second over all steady steps of this invocation (``None`` if none)."""
        return self.steady_tokens / self.steady_train_s if self.steady_train_s > 0 else None

    def warmup_overhead_s(self) -> float:
        """Wall seconds the warm-up steps took beyond what they would have at the steady speed (the
        compile time, when compiling); all of their time when no steady step followed. Never negative."""
        steady = self.steady_tokens_per_s()
        expected = self.warmup_tokens / steady if steady else 0.0
        return max(0.0, self.warmup_wall - expected)
