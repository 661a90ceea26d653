"""Training of LPIPS-Sat: self-supervised backbone pretraining and 2AFC calibration of the heads."""
