"""Classification recipe: a timm backbone, a registered loss, torchmetrics reports.

    python recipes/classification.py fit --config recipes/configs/classification.yaml
    python recipes/classification.py fit --config recipes/configs/classification.yaml \
        --config recipes/configs/longtail_ldam.yaml
    python recipes/classification.py fit --config recipes/configs/classification.yaml \
        --data.data_dir /path/to/image_folder --model.backbone resnet50 --data.in_chans 3

Without ``--data.data_dir`` it trains on the embedded digits. ``fit`` tests right after training
(``--test_after_fit false`` turns that off) and writes the reports to the run's log directory.
"""

from lightning_losses.tasks.classification import cli_main

if __name__ == "__main__":
    cli_main()
