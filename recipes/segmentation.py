"""Segmentation recipe: an smp U-Net, a weighted sum of registered losses, topology reports.

    python recipes/segmentation.py fit --config recipes/configs/segmentation.yaml
    python recipes/segmentation.py fit --config recipes/configs/segmentation.yaml \
        --config recipes/configs/segmentation_cldice.yaml
    python recipes/segmentation.py fit --config recipes/configs/segmentation.yaml \
        --data.data_dir /path/to/tree --data.in_chans 3

Without ``--data.data_dir`` it trains on the embedded thin structures. ``fit`` tests right after
training (``--test_after_fit false`` turns that off) on every test split and writes the report
(``test_metrics.json``) and ``test_panel.png`` to the run's log directory.
"""

from lightning_losses.tasks.segmentation import cli_main

if __name__ == "__main__":
    cli_main()
