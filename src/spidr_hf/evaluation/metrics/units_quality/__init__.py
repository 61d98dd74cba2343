"""The unit-quality `evaluate` metric module (units_quality.py); a package only so that it ships with spidr_hf."""
