"""Degradation operators (forward models) for the restoration tasks."""

from .base import DEFAULT_SIGMA_Y, LinearOperator, Operator, cg
from .blur import Blur, gaussian_kernel, kernel_from_file, motion_kernel, uniform_kernel
from .composed import Composed, LinearComposed
from .inpainting import Inpainting, box_mask, freeform_mask, mask_from_file, random_mask
from .jpeg import JPEG, jpeg_file_info, quant_tables
from .nonlinear import HDR, PhaseRetrieval, Quantize
from .nonlinear_blur import KernelModelError, NonlinearBlur, load_kernel_wizard, load_nonlinear_blur
from .resize import SuperResolution

__all__ = [
    "DEFAULT_SIGMA_Y", "Operator", "LinearOperator", "cg",
    "Blur", "gaussian_kernel", "motion_kernel", "uniform_kernel", "kernel_from_file",
    "Inpainting", "box_mask", "random_mask", "freeform_mask", "mask_from_file",
    "SuperResolution", "PhaseRetrieval", "HDR", "Quantize",
    "NonlinearBlur", "load_nonlinear_blur", "load_kernel_wizard", "KernelModelError",
    "JPEG", "quant_tables", "jpeg_file_info", "Composed", "LinearComposed",
]
