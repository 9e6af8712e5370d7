"""mnist-diffusion: denoising diffusion probabilistic models (Ho et al. 2020) on 28x28 images.

Library layout: config (dataclasses), data (datasets), schedule (forward-process math), models
(networks), samplers (reverse process), sampling (model -> images), training (the loop),
checkpoint (safe IO), images (grids/GIFs), visualize (figures), cli (the command line).
"""
__version__ = "0.1.0"
