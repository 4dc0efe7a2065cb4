"""Diffusion-model networks (U-Nets with time-aware blocks); each keeps ``forward(t, x)`` at its
boundary, as every time-aware pynodeta module does."""
