"""Config sources: they fill `controlplane.model.store.ConfigStore` and nothing else."""
