"""A learning check for the Table 2 model family, not SVHN: 54x54 RGB images of 1-3 REAL MNIST digits side by side
(a digit-sequence task the real SVHN sample, 3 images per split, is far too small for), labelled as SVHN is: five
positions, the null class (10) after the sequence's end. A narrowed SVHN CNN with its five heads, trained briefly
with the sequence task's loss, must read whole sequences far better than chance (chance: ~100% sequence error)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stn.data.mnist import load_mnist
from stn.models.svhn import svhn_net
from stn.tasks import SequenceClassification

SIDE, DIGIT, MAX_SHOWN, HEADS, NULL = 54, 18, 3, 5, 10


def digit_sequences(images, labels, count: int, generator: torch.Generator):
    """`count` images of 1-3 digits (18x18 each, left to right at a random height), labels [N, 5] and lengths [N]."""
    lengths = torch.randint(1, MAX_SHOWN + 1, (count,), generator=generator)
    picks = torch.randint(len(images), (count, MAX_SHOWN), generator=generator)
    digits = F.interpolate(images[picks.flatten()].float()[:, None], size=(DIGIT, DIGIT), mode="bilinear")
    digits = digits.view(count, MAX_SHOWN, DIGIT, DIGIT)
    canvas = torch.zeros(count, SIDE, SIDE)
    tops = torch.randint(0, SIDE - DIGIT + 1, (count,), generator=generator)
    targets = torch.full((count, HEADS), NULL, dtype=torch.long)
    for i in range(count):
        for slot in range(int(lengths[i])):
            canvas[i, tops[i] : tops[i] + DIGIT, slot * DIGIT : (slot + 1) * DIGIT] = digits[i, slot]
            targets[i, slot] = labels[picks[i, slot]]
    rgb = canvas.clamp(0, 255).to(torch.uint8)[:, None].expand(-1, 3, -1, -1).contiguous()
    return rgb, targets, lengths


def test_a_narrowed_svhn_cnn_learns_to_read_real_mnist_digit_sequences(mnist_raw_root, tmp_path):
    torch.manual_seed(0)
    mnist = load_mnist(tmp_path / "data", mnist_raw_root)
    generator = torch.Generator().manual_seed(0)
    train_x, train_labels, train_lengths = digit_sequences(mnist.train_images, mnist.train_labels, 6000, generator)
    test_x, test_labels, test_lengths = digit_sequences(mnist.test_images, mnist.test_labels, 1000, generator)
    model = svhn_net(  # the Table 2 CNN's structure (conv blocks, max pools, FC, five 11-way heads), narrowed
        input_shape=[3, SIDE, SIDE],
        num_classes=11,
        num_digits=HEADS,
        channels=[16, 32, 32, 32],
        kernel=5,
        pool_after=[1, 2, 3, 4],
        fc=[256],
        dropout=0.0,
        mean=[0.13] * 3,
        std=[0.3] * 3,
    )
    task = SequenceClassification()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)

    def sequence_error(x, labels, lengths) -> float:
        model.eval()
        with torch.no_grad():
            correct = task.correct(model(x.float()), (labels, lengths))
        model.train()
        return 100.0 * (1 - correct.float().mean().item())

    before = sequence_error(test_x, test_labels, test_lengths)
    for _ in range(400):
        index = torch.randint(len(train_x), (64,), generator=generator)
        loss = task.loss(model(train_x[index].float()), (train_labels[index], train_lengths[index]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = sequence_error(test_x, test_labels, test_lengths)
    assert before > 95.0  # chance: a whole sequence of 1-3 digits and its end, right by luck
    # measured: 100.0% -> 18.7% (seeded, CPU)
    assert after < 40.0, f"sequence error {before:.1f}% -> {after:.1f}% after 400 steps"
