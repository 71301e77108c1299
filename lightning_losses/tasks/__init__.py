"""LightningModules and CLIs behind the recipes."""
