"""The training stream: the batches a run trains on, drawn so that a resumed run sees exactly the batches an
uninterrupted one would (every random choice is seeded by the run's seed and the epoch or iteration)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from stn.precision import to_input

# The random streams derived from the run's seed: batch order and redraw per epoch, augmentation per iteration, and
# (several processes only) each rank's own stream for dropout.
BATCH_ORDER, REDRAW, AUGMENT, RANK = 0, 1, 2, 3

Targets = Tensor | tuple[Tensor, ...]  # per-example targets of a split (see stn.data.splits)


def stream_seed(seed: int, counter: int, stream: int) -> int:
    """A well-mixed 32-bit seed for one epoch (or iteration) of one random stream: resuming needs no generator
    state."""
    return int(np.random.SeedSequence([seed, counter, stream]).generate_state(1)[0])


def select(targets: Targets, index: Tensor | slice) -> Targets:
    """The targets of the examples `index`, whichever tensors the task scores."""
    return tuple(t[index] for t in targets) if isinstance(targets, tuple) else targets[index]


def to_device(targets: Targets, device: torch.device) -> Targets:
    return tuple(t.to(device) for t in targets) if isinstance(targets, tuple) else targets.to(device)


def epoch_batches(
    images: Tensor,
    targets: Targets,
    batch_size: int,
    seed: int,
    start: int,
    redraw: Callable[[int, torch.device], Tensor] | None,
    transform: Callable[[Tensor, torch.Generator], Tensor] | None = None,
) -> Iterator[tuple[Tensor, Targets]]:
    """Training batches from iteration `start` on, forever: epoch e is a device-side permutation seeded by
    (seed, e), so a resumed run draws exactly the batches an uninterrupted one would. With `redraw`, every epoch
    after the first trains on a fresh draw of the distortions (the first uses the stored set). With `transform`,
    each batch is augmented on the device by a generator seeded by (seed, iteration). The last partial batch of an
    epoch is dropped."""
    steps_per_epoch = len(images) // batch_size
    epoch, first = divmod(start, steps_per_epoch)
    while True:
        if redraw is None or epoch == 0:
            epoch_images = images
        else:  # the same digits, freshly distorted (a training subset keeps its first N)
            epoch_images = redraw(stream_seed(seed, epoch, REDRAW), images.device)[: len(images)]
        generator = torch.Generator(images.device).manual_seed(stream_seed(seed, epoch, BATCH_ORDER))
        order = torch.randperm(len(images), generator=generator, device=images.device)
        for position in range(first, steps_per_epoch):
            index = order[position * batch_size : (position + 1) * batch_size]
            batch = epoch_images[index]
            if transform is not None:
                iteration = epoch * steps_per_epoch + position
                augment = torch.Generator(images.device).manual_seed(stream_seed(seed, iteration, AUGMENT))
                batch = transform(batch, augment)
            yield to_input(batch), select(targets, index)
        epoch, first = epoch + 1, 0
