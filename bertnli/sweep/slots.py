"""Device slots: which GPUs each trial process of this host sees, and how many trials share one.

The GPUs a sweep may use (`--gpus`, default every GPU CUDA sees) are cut into groups of
`--gpus-per-trial`; each group holds up to `--trials-per-gpu` trials at once. A trial process
sees only its group through CUDA_VISIBLE_DEVICES, so `--device auto` is its own first GPU, and
a host's trials spread over its GPUs instead of all landing on cuda:0. A slot is held for
exactly as long as its worker runs the trial, however the trial ends.

Indices are CUDA's as the sweep process sees them: under a scheduler that already set
CUDA_VISIBLE_DEVICES (SLURM does), index 0 is the first GPU it was given, and the trial's
CUDA_VISIBLE_DEVICES names that same device in the scheduler's terms.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass

from bertnli import BadInput
from bertnli.sweep.params import values_trained

HOST_GPUS_SEAM = "BERTNLI_HOST_GPUS"  # comma-separated GPU names: what CUDA would list, for hosts without one (tests)


def host_gpu_count() -> int:
    """GPUs CUDA sees from this process, without creating a CUDA context here (torch asks NVML first)."""
    seam = os.environ.get(HOST_GPUS_SEAM)
    if seam is not None:
        return len([n for n in seam.split(",") if n.strip()])
    import torch

    return torch.cuda.device_count()


@dataclass(frozen=True)
class Placement:
    """Where one trial runs: `gpus` are CUDA indices as the sweep sees them (empty: the CPU)."""

    gpus: tuple[int, ...]
    visible: str | None  # the trial's CUDA_VISIBLE_DEVICES, None to leave the environment as it is
    shared: bool  # other trials may run on these GPUs at the same time
    ranks: int = 1  # data-parallel processes of the trial: one per GPU of a group, or --procs-per-trial on the CPU

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return base if self.visible is None else {**base, "CUDA_VISIBLE_DEVICES": self.visible}


UNPLACED = Placement((), None, False)  # the environment as it is: the CPU, or the device the user pinned


def parse_gpus(text: str | None) -> tuple[int, ...] | None:
    """`--gpus 0,1,3` -> (0, 1, 3); None when not given (every GPU)."""
    if text is None or text == "":
        return None
    try:
        gpus = tuple(int(x) for x in str(text).split(","))
    except ValueError:
        raise BadInput(f"--gpus {text}: give GPU indices separated by commas, e.g. --gpus 0,1,2,3") from None
    if len(set(gpus)) != len(gpus) or any(g < 0 for g in gpus):
        raise BadInput(f"--gpus {text}: each index once, none negative, e.g. --gpus 0,1,2,3")
    return gpus


def plan_groups(gpus: tuple[int, ...] | None, per_trial: int, seen: int, device: str = "auto") -> list[tuple[int, ...]]:
    """The GPU groups trials run on; [()] (one group, the environment left as it is) where the sweep
    places no GPU: a CPU host, `--device cpu`, or a device the user pinned (`cuda:1`)."""
    placed = device in ("auto", "cuda")
    if gpus is not None and not placed:
        raise BadInput(f"--gpus with --device {device}: that device is fixed; drop --gpus, or use --device auto")
    if gpus is None:
        gpus = tuple(range(seen)) if placed else ()
    if not gpus:
        if per_trial > 1:
            raise BadInput(
                f"--gpus-per-trial {per_trial}: this sweep places no GPU (no CUDA GPU, or --device {device})"
            )
        return [()]
    missing = [g for g in gpus if g >= seen]
    if missing:
        have = f"GPUs 0-{seen - 1}" if seen > 1 else ("GPU 0" if seen else "no GPU")
        raise BadInput(f"--gpus {','.join(map(str, gpus))}: CUDA on this host sees {have}; give indices it sees")
    if per_trial > len(gpus):
        raise BadInput(f"--gpus-per-trial {per_trial} is more than the {len(gpus)} GPU(s) given; lower it")
    if len(gpus) % per_trial:
        raise BadInput(
            f"--gpus-per-trial {per_trial} does not divide the {len(gpus)} GPUs given; "
            f"give a multiple of {per_trial} GPUs with --gpus"
        )
    return [gpus[i : i + per_trial] for i in range(0, len(gpus), per_trial)]


def visible_devices(group: tuple[int, ...], inherited: str | None) -> str | None:
    """CUDA_VISIBLE_DEVICES for a trial on `group`, in the terms of the one the sweep inherited (if any)."""
    if not group:
        return None
    if inherited is None or inherited.strip() == "":
        return ",".join(map(str, group))
    names = [n.strip() for n in inherited.split(",")]
    return ",".join(names[g] for g in group)


class Slots:
    """The free capacity of each GPU group; workers take a slot per trial and always give it back."""

    def __init__(self, groups: list[tuple[int, ...]], per_group: int, inherited: str | None, cpu_ranks: int = 1):
        self.per_group, self.inherited, self.cpu_ranks = per_group, inherited, cpu_ranks
        self.free = {g: per_group for g in groups}
        self.cond = threading.Condition()
        self.waiting_alone = 0  # trials that wait for a GPU to themselves go first

    @property
    def count(self) -> int:
        return len(self.free) * self.per_group

    @contextlib.contextmanager
    def take(self, alone: bool = False, beat=None, stop: threading.Event | None = None, beat_s: float = 5.0):
        """A placement for one trial, on the group with the most room (trials spread before they pack);
        it waits while every GPU holds its --trials-per-gpu.

        `alone`: a group with no other trial, held whole (a trial that ran out of memory beside others).
        It may wait for other trials to end, so meanwhile `beat()` is called every `beat_s` (the trial
        is already asked: other hosts must see it alive), and plain takes wait behind it. It gives up,
        yielding None, once `stop` is set or `beat()` says the trial was lost."""
        need = self.per_group if alone else 1
        room = lambda: max(self.free.values()) >= need and (alone or not self.waiting_alone)  # noqa: E731
        group = None
        with self.cond:
            self.waiting_alone += alone
        try:
            while not (stop is not None and stop.is_set()):
                with self.cond:
                    if self.cond.wait_for(room, timeout=beat_s if beat else None):
                        group = max(self.free, key=self.free.get)  # the first of the roomiest, in --gpus order
                        self.free[group] -= need
                        break
                if not beat():
                    break
        finally:
            with self.cond:
                self.waiting_alone -= alone
                self.cond.notify_all()
        if group is None:
            yield None
            return
        try:
            shared = bool(group) and need < self.per_group
            ranks = len(group) if group else self.cpu_ranks
            yield Placement(group, visible_devices(group, self.inherited), shared, ranks)
        finally:
            with self.cond:
                self.free[group] += need
                self.cond.notify_all()


def slots_of(cfg) -> Slots:
    """This host's slots for sweep config `cfg` (checked: impossible settings are one-line errors)."""
    if cfg.trials_per_gpu < 1 or cfg.gpus_per_trial < 1 or cfg.procs_per_trial < 1:
        raise BadInput("--trials-per-gpu, --gpus-per-trial and --procs-per-trial must be at least 1")
    gpus = parse_gpus(cfg.gpus)
    seen = host_gpu_count() if cfg.base.device in ("auto", "cuda") else 0
    groups = plan_groups(gpus, cfg.gpus_per_trial, seen, cfg.base.device)
    on_cpu = groups == [()] and (cfg.base.device == "cpu" or (cfg.base.device == "auto" and not seen))
    if cfg.procs_per_trial > 1 and not on_cpu:
        raise BadInput(
            f"--procs-per-trial {cfg.procs_per_trial} is for trials on the CPU; on GPUs a trial runs one process "
            "per GPU: use --gpus-per-trial (or --device cpu)"
        )
    ranks = max(cfg.gpus_per_trial, cfg.procs_per_trial)
    searched = any(p.name == "batch_size" for p in cfg.space)
    for size in values_trained(cfg.space, "batch_size", cfg.base.batch_size):  # or each such trial fails every try
        if int(size) % ranks:
            raise BadInput(
                f"--batch-size {size} does not split over the {ranks} processes of a trial; "
                f"choose a multiple of {ranks}" + (" for every batch_size in the space" if searched else "")
            )
    per_group = cfg.trials_per_gpu if groups != [()] else max(1, cfg.workers or 1)
    slots = Slots(groups, per_group, os.environ.get("CUDA_VISIBLE_DEVICES"), cfg.procs_per_trial)
    if cfg.workers is not None and cfg.workers > slots.count:
        raise BadInput(
            f"--workers {cfg.workers} is more than this host's {slots.count} slot(s) "
            f"({len(groups)} GPU group(s) x {per_group} trial(s) per GPU); lower it or raise --trials-per-gpu"
        )
    return slots
