"""What differs between the paper's tables: one TableSpec each (Table 2 and 3 add theirs when their runs land)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stn.tasks import check_metric


@dataclass(frozen=True)
class TableSpec:
    name: str  # the command (python -m stn.results <name>) and the default output file name
    title: str  # the caption's opening words
    paper_csv: Path  # the paper's numbers: rows model, one column per data config `column` (the table's columns)
    metric: str  # what a cell averages: the result key test_<metric>, in % (stn.tasks: error or accuracy)
    paper_note: str  # how the paper's numbers were obtained
    paper_samples: int  # training samples per run of the paper's recipe (iterations x batch), for recipe captions

    def __post_init__(self) -> None:
        check_metric(self.metric)


TABLE1 = TableSpec(
    name="table1",
    title="Table 1 — distorted MNIST",
    paper_csv=Path("results/paper/table1.csv"),
    metric="error",
    paper_note="paper: mean of 3 seeds",
    paper_samples=150_000 * 256,  # [appendix] 150k iterations x batch 256
)
TABLE2 = TableSpec(
    name="table2",
    title="Table 2 — SVHN multi-digit sequences",
    paper_csv=Path("results/paper/table2.csv"),
    metric="error",  # % of test images with any of the five heads wrong
    paper_note="sequence error: an image is right only if all five digit heads are; paper: one run per cell",
    paper_samples=400_000 * 128,  # [appendix] 400k iterations x batch 128
)
TABLE3 = TableSpec(
    name="table3",
    title="Table 3 — CUB-200-2011",
    paper_csv=Path("results/paper/table3.csv"),
    metric="accuracy",
    paper_note="paper: one number per row; its batch size and total iterations are unstated (ours: 32, 30k [open])",
    paper_samples=30_000 * 32,  # [open] 30k iterations (lr drops at 10k/20k/25k [appendix]) x batch 32 [open]
)
ADDITION = TableSpec(
    name="addition",
    title="MNIST addition (Appendix A.1) — two RTS digits, their sum",
    paper_csv=Path("results/paper/addition.csv"),
    metric="error",
    paper_note=(
        "paper: its text gives FCN, CNN, the best single ST-FCN (18.5, family unstated) and the best 2xST-FCN; "
        "the other per-family numbers are from one secondary source; seeds unstated"
    ),
    paper_samples=150_000 * 256,  # [open] the appendix names no schedule: Table 1's, presumably
)
TRANSFORMER3D = TableSpec(
    name="transformer3d",
    title="3D transformer (Appendix A.3) — extruded MNIST digits in 60^3 volumes",
    paper_csv=Path("results/paper/transformer3d.csv"),
    metric="error",
    paper_note="paper: no numbers (a figure only)",
    paper_samples=150_000 * 256,  # no schedule given; Table 1's, for recipe captions
)
TABLES = {spec.name: spec for spec in (TABLE1, TABLE2, TABLE3, ADDITION, TRANSFORMER3D)}
