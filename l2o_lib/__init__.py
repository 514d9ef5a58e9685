"""l2o-lab: learning to optimize in PyTorch."""
