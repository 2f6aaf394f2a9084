"""Everything between a dataset on disk and a batch of token ids."""
