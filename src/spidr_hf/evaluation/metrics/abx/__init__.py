"""The ABX `evaluate` metric module (abx.py); a package only so that it ships with spidr_hf."""
