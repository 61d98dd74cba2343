"""What every training run of spidr-hf shares: its config file, its output folder and resuming, its held-out split."""
