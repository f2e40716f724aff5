"""What every shopmesh service shares: start-up, config, errors, identity, storage, logs."""
