"""`evaluate` metric modules, one folder each: `evaluate.load(spidr_hf.evaluation.metric_path(name))`."""
