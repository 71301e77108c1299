"""Diffusion recipe: a small diffusers U-Net on the embedded digits, with a sample-quality report.

    python recipes/diffusion.py fit --config recipes/configs/diffusion.yaml
    python recipes/diffusion.py fit --config recipes/configs/diffusion.yaml \
        --config recipes/configs/diffusion_vpred_minsnr.yaml
    lightning-losses fit diffusion -c diffusion -c diffusion_edm

Without ``--data.data_dir`` it trains on scikit-learn's digits (8x8). ``fit`` tests right after
training (``--test_after_fit false`` turns that off): it samples with the averaged weights and
writes the report (``test_metrics.json``: FID, KID and the digit classifier's confidence of
the samples, of an untrained model, of Gaussian noise and of the real test images),
``test_samples.png`` and ``test_loss_by_timestep.png`` to the run's log directory.
"""

from lightning_losses.tasks.diffusion import cli_main

if __name__ == "__main__":
    cli_main()
