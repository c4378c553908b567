"""Triton kernels (layer 1 of 3). Importing this package imports neither Triton nor CUDA:
``support`` holds the backend checks and limits; the kernel modules import Triton when used."""
