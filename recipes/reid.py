"""Person re-ID recipe: a timm backbone with the bag of tricks, CE-LS + triplet, CMC/mAP/mINP.

    python recipes/reid.py fit --config recipes/configs/reid.yaml
    python recipes/reid.py fit --config recipes/configs/reid.yaml \
        --config recipes/configs/reid_circle.yaml
    python recipes/reid.py fit --config recipes/configs/reid.yaml \
        --data.data_dir /path/to/Market-1501-v15.09.15 --data.image_size [256,128]

Without ``--data.data_dir`` it trains on the embedded synthetic identities; with it, on the
Market-1501 layout (``bounding_box_train/``, ``query/``, ``bounding_box_test/``). ``fit`` tests
right after training (``--test_after_fit false`` turns that off) and writes the report
(``test_metrics.json``: R1, R5, R10, mAP and mINP with and without re-ranking) and
``test_retrieval.png`` to the run's log directory.
"""

from lightning_losses.tasks.reid import cli_main

if __name__ == "__main__":
    cli_main()
