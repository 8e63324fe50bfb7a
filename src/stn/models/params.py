"""Parameter count (and solved width) of every Table 1 model on every dataset, as a markdown table.

    python -m stn.models.params [--data mnist_r mnist_rts ...] [--models fcn cnn ...]

Models are built exactly as training builds them: from the composed Hydra config (configs/train.yaml).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from stn.models.mnist import count_parameters, reference_parameters

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
TABLE1_DATA = ("mnist_r", "mnist_rts", "mnist_p", "mnist_e", "mnist_tc")
TABLE1_MODELS = ("fcn", "cnn", "st_fcn_aff", "st_fcn_proj", "st_fcn_tps", "st_cnn_aff", "st_cnn_proj", "st_cnn_tps")


def params_table(datasets: Sequence[str] = TABLE1_DATA, models: Sequence[str] = TABLE1_MODELS) -> str:
    """Markdown: one row per model, one column per dataset, cells 'parameters (width)'."""
    rows = [f"| model | {' | '.join(datasets)} |", f"|---|{'---|' * len(datasets)}"]
    references = {}
    worst = 0.0
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="params"):
        for model_name in models:
            cells = []
            for data_name in datasets:
                net = compose(config_name="train", overrides=[f"data={data_name}", f"model={model_name}"]).model.net
                model = instantiate(net)
                count, target = (
                    count_parameters(model),
                    reference_parameters(net.input_shape, net.num_classes, net.ceil_mode, net.param_reference),
                )
                references[data_name] = target
                worst = max(worst, abs(count - target) / target)
                cells.append(f"{count:,} ({model.width})")
            rows.append(f"| {model_name} | {' | '.join(cells)} |")
    rows.append(f"| *reference* | {' | '.join(f'{references[d]:,}' for d in datasets)} |")
    notes = (
        "Cells: parameters (width: FCN hidden units / CNN filters per conv layer). Each model's width is solved "
        "to match the reference (the plain CNN with 64 filters on the dataset's baseline input); largest "
        f"deviation {100 * worst:.2f}%."
    )
    return "\n".join(rows) + "\n\n" + notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=TABLE1_DATA, help="data configs (columns)")
    parser.add_argument("--models", nargs="+", default=TABLE1_MODELS, help="model configs (rows)")
    args = parser.parse_args()
    print(params_table(args.data, args.models))


if __name__ == "__main__":
    main()
